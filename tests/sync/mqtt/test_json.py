"""JSON mode against a real Mosquitto: birth/will, alerts, retained alarms, outage, TLS, auth."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.sync.delivery import Delivered, RetryAfter

from .broker import PASSWORD, USER, Mosquitto, make_pki
from .conftest import GW
from .support import FakeHandle, alert, drive, event_row, eventually

pytestmark = pytest.mark.timeout(60)
P = f"edge/{GW}"


@contextlib.asynccontextmanager
async def driving(sink: Any, handle: FakeHandle) -> Any:
    task = asyncio.create_task(drive(sink, handle))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def status(scada: Any) -> list[str]:
    return [b["state"] for _, b in scada.on(f"{P}/status")]


async def test_birth_online_retained_and_offline_on_clean_stop(mosq: Mosquitto,
                                                               json_sink_factory: Any,
                                                               scada_factory: Any) -> None:
    sink = json_sink_factory(mosq.url)
    await sink.start()
    assert await sink.link.wait_ready(10)
    late = scada_factory(mosq.port, f"{P}/status")  # connects after the birth: retained
    assert await late.until(lambda g: any(r for _, t, _, r in g))
    (_, body), = late.on(f"{P}/status")
    assert body["state"] == "online" and body["gateway_id"] == GW and body["version"]
    assert sink.stats()["connected"] and sink.stats()["state"] == "connected"
    await sink.close()
    assert await late.until(lambda g: len(g) >= 2)
    assert status(late) == ["online", "offline"]


async def test_alerts_raised_cleared_and_retained_alarm_state(mosq: Mosquitto,
                                                              json_sink_factory: Any,
                                                              scada_factory: Any) -> None:
    gw = "gw-alerts"
    sink, h = json_sink_factory(mosq.url, gateway_id=gw), FakeHandle()
    scada = scada_factory(mosq.port, f"edge/{gw}/#")
    raised = alert("anomaly_raised", "pump-02.de_accel", diagnosis={"fault": "bearing"})
    h.commit("events", raised, event_row("driver_disconnected", "plc-1"))
    async with driving(sink, h):
        assert await scada.until(lambda g: len([t for _, t, _, _ in g if "/alerts/" in t]) == 1)
        h.commit("events", alert("anomaly_cleared", "pump-02.de_accel", score=0.1),
                 alert("anomaly_raised", "fan-01"))
        assert await scada.until(lambda g: len([t for _, t, _, _ in g if "/alerts/" in t]) == 3)
    alerts = scada.on(f"edge/{gw}/alerts/")
    assert [(t.rsplit("/", 1)[1], b["kind"]) for t, b in alerts] == [
        ("pump-02.de_accel", "anomaly_raised"), ("pump-02.de_accel", "anomaly_cleared"),
        ("fan-01", "anomaly_raised")]
    first = alerts[0][1]
    src = json.loads(raised)
    assert first["event_id"] == src["event_id"] and first["score"] == 0.9
    assert first["threshold"] == 0.5 and first["model"] == {"name": "iforest", "version": "3"}
    assert first["diagnosis"] == {"fault": "bearing"} and first["timestamp"] == src["timestamp"]
    assert set(first) >= {"event_id", "kind", "severity", "source_id", "score", "threshold",
                          "model", "timestamp"}
    (t, ev), = scada.on(f"edge/{gw}/events/")
    assert t == f"edge/{gw}/events/driver_disconnected" and ev["source_id"] == "plc-1"
    # A SCADA connecting now sees what is active now (retained), not the history.
    late = scada_factory(mosq.port, f"edge/{gw}/alarms/#")
    assert await late.until(lambda g: len(g) == 2)
    state = {t.rsplit("/", 1)[1]: b["active"] for t, b in late.on(f"edge/{gw}/alarms/")}
    assert state == {"pump-02.de_accel": False, "fan-01": True}
    assert all(isinstance(o, Delivered) for o in h.outcomes)


async def test_broker_outage_while_alerts_raised_publishes_all_in_order_once(
        own_broker: Mosquitto, json_sink_factory: Any, scada_factory: Any) -> None:
    sink, h = json_sink_factory(own_broker.url), FakeHandle(max_rows=7)
    h.commit("events", alert("anomaly_raised", "s-0"))
    async with driving(sink, h):
        scada = scada_factory(own_broker.port, f"{P}/alerts/#")
        assert await scada.until(lambda g: len(g) == 1)
        scada.close()
        own_broker.stop()  # kill -9 of the broker
        expected = []
        for i in range(40):  # raised and cleared while nobody can hear
            row = alert("anomaly_cleared" if i % 2 else "anomaly_raised", f"s-{i % 3}")
            expected.append(json.loads(row)["event_id"])
            h.commit("events", row)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert sink.stats()["connected"] is False
        assert any(isinstance(o, RetryAfter) and o.kind == "broker_down" for o in h.outcomes)
        own_broker.start()
        scada = scada_factory(own_broker.port, f"{P}/alerts/#")
        assert await scada.until(lambda g: len(g) >= 40, within=30)
        await asyncio.sleep(0.3)  # anything duplicated would arrive now
    got = [b["event_id"] for _, b in scada.on(f"{P}/alerts/")]
    assert got == expected  # all, in commit order, each once
    assert h.backlog == 0


async def test_tls_and_password(mosq: Mosquitto, json_sink_factory: Any,
                                scada_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_TEST_PW", PASSWORD)
    gw = "gw-tls"
    sink, h = json_sink_factory(f"mqtts://127.0.0.1:{mosq.tls_port}", gateway_id=gw,
                                username=USER, password="${MQTT_TEST_PW}",
                                ca_file=str(mosq.ca)), FakeHandle()
    assert "s3cret" not in repr(sink.cfg) and "s3cret" not in str(sink.cfg.model_dump())
    scada = scada_factory(mosq.tls_port, f"edge/{gw}/#", tls_ca=str(mosq.ca),
                          auth=(USER, PASSWORD))
    h.commit("events", alert("anomaly_raised", "pump-9"))
    async with driving(sink, h):
        assert await scada.until(lambda g: any("/alerts/pump-9" in t for _, t, _, _ in g))
    assert sink.stats()["connected"]


async def _failing(sink: Any, caplog: pytest.LogCaptureFixture, n: int) -> list[str]:
    caplog.set_level(logging.ERROR, logger="edge_agent.sync.mqtt.client")
    await sink.start()
    assert await eventually(lambda: sink.stats()["connect_failures"] >= n)
    out = await sink.deliver(FakeHandle().next_batch() or _one_batch())
    assert isinstance(out, RetryAfter) and out.kind == "broker_down"
    return [getattr(r, "reason", "") for r in caplog.records if r.message == "mqtt connect failed"]


def _one_batch() -> Any:
    h = FakeHandle()
    h.commit("events", alert("anomaly_raised", "x"))
    return h.next_batch()


async def test_wrong_password_one_clear_line_per_attempt_and_retries(
        mosq: Mosquitto, json_sink_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    sink = json_sink_factory(f"mqtt://127.0.0.1:{mosq.auth_port}", username=USER,
                             password="wrong-password")
    reasons = await _failing(sink, caplog, 3)
    assert len(reasons) >= 3 and sink.stats()["connect_failures"] == len(reasons)
    assert all("refused the credentials" in r for r in reasons), reasons
    assert not any("wrong-password" in r.getMessage() + str(r.__dict__) for r in caplog.records)
    delays = [vars(r)["retry_in_s"] for r in caplog.records if r.message == "mqtt connect failed"]
    assert all(d > 0 for d in delays)  # backoff between attempts
    assert sink.stats()["connected"] is False and "credentials" in sink.stats()["last_error"]
    t0 = time.monotonic()
    await sink.close()  # in the middle of a backoff wait: a stop does not wait it out
    assert time.monotonic() - t0 < 1.0 and sink.stats()["state"] == "closed"


async def test_untrusted_certificate_one_clear_line_per_attempt(
        mosq: Mosquitto, json_sink_factory: Any, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    other_ca, _, _ = make_pki(tmp_path / "other", "some other CA")
    sink = json_sink_factory(f"mqtts://127.0.0.1:{mosq.tls_port}", username=USER,
                             password=PASSWORD, ca_file=str(other_ca))
    reasons = await _failing(sink, caplog, 2)
    assert len(reasons) >= 2 and all("not trusted" in r for r in reasons), reasons


CHILD = Path(__file__).with_name("child_sink.py")


async def test_offline_after_kill_9_of_the_process_running_the_sink(
        mosq: Mosquitto, scada_factory: Any) -> None:
    gw = "gw-killed"
    scada = scada_factory(mosq.port, f"edge/{gw}/status")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
    proc = subprocess.Popen([sys.executable, str(CHILD), mosq.url, gw], env=env,  # noqa: ASYNC220
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.strip() == b"delivered"
        assert await scada.until(lambda g: len(g) >= 1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert await scada.until(lambda g: len(g) >= 2, within=20)  # socket closed by the kernel
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [b["state"] for _, b in scada.on(f"edge/{gw}/status")] == ["online", "offline"]


async def test_connection_dropped_mid_burst_loses_nothing(mosq: Mosquitto,
                                                          json_sink_factory: Any,
                                                          scada_factory: Any) -> None:
    gw = "gw-burst"
    sink, h = json_sink_factory(mosq.url, gateway_id=gw), FakeHandle(max_rows=400)
    scada = scada_factory(mosq.port, f"edge/{gw}/alerts/#")
    rows = [alert("anomaly_raised", f"s-{i % 5}") for i in range(3000)]
    expected = [json.loads(r)["event_id"] for r in rows]
    h.commit("events", *rows)
    async with driving(sink, h):
        assert await scada.until(lambda g: len(g) >= 500)
        s = sink.link.session
        assert s is not None
        s.client.socket().shutdown(2)  # the connection drops in the middle of the burst
        assert await scada.until(lambda g: len({json.loads(p)["event_id"]
                                                for _, _, p, _ in g}) >= 3000, 30), (
            sink.stats(), h.backlog, h.outcomes[-3:], len(scada.got))
        assert await eventually(lambda: h.backlog == 0)
    got = [b["event_id"] for _, b in scada.on(f"edge/{gw}/alerts/")]
    first_seen = list(dict.fromkeys(got))
    assert first_seen == expected  # nothing lost, order kept
    assert sink.stats()["connects"] == 2
    print(f"duplicates after the drop: {len(got) - len(first_seen)}")
    per_source: dict[str, list[str]] = {}
    for _, b in scada.on(f"edge/{gw}/alerts/"):
        per_source.setdefault(b["source_id"], []).append(b["event_id"])
    for src, ids in per_source.items():  # a redelivery repeats an id, never reorders a source
        want = [e for e, r in zip(expected, rows, strict=True) if f'"{src}"' in r]
        assert list(dict.fromkeys(ids)) == want
