"""The MQTT publisher over the real SQLite buffer and the generic delivery loop.

Alerts come from committed events (the alerter's hysteresis, raised then cleared); a broker
outage keeps them in the buffer and they follow in order, once each; the buffer frees rows only
once the MQTT sink (a registered consumer) has delivered them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_agent.agent.status import mqtt_view
from edge_agent.models.alerting import AlertConfig, AnomalyAlerter
from edge_agent.records import Event, FeatureVector, ModelRef
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.mqtt.publisher import MqttPublisher

from .broker import Mosquitto
from .conftest import mqtt_cfg
from .support import Scada, eventually

pytestmark = pytest.mark.timeout(60)
MODEL = ModelRef("iforest", "7")


@contextlib.asynccontextmanager
async def running(tmp_path: Path, url: str, gw: str, **kw: object
                  ) -> AsyncIterator[tuple[Buffer, MqttPublisher]]:
    buffer = Buffer(tmp_path / "buffer.db", BufferConfig())
    await buffer.start()
    pub = MqttPublisher(buffer, mqtt_cfg(url, **kw), gw, tmp_path)
    task = asyncio.create_task(pub.run())
    try:
        yield buffer, pub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pub.flush(5.0)
        await buffer.close()


def scored(alerter: AnomalyAlerter, scores: list[float], t0: float) -> list[Event]:
    out = []
    for i, s in enumerate(scores):
        ev = alerter.observe(s, 0.5, MODEL, t0 + i)
        if ev is not None:
            out.append(ev)
    return out


async def test_hysteresis_alerts_through_the_buffer(mosq: Mosquitto, tmp_path: Path) -> None:
    gw, p = "gw-buf", "edge/gw-buf"
    scada = Scada(mosq.port, (f"{p}/#",))
    alerter = AnomalyAlerter("pump-1.de_accel", AlertConfig(raise_after=2, clear_after=3))
    try:
        async with running(tmp_path, mosq.url, gw) as (buffer, pub):
            t0 = time.time()
            # Windows 1 s apart: isolated ones over threshold raise nothing; 2 s over in a row
            # (three windows) do.
            events = scored(alerter, [0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.8, 0.2, 0.9], t0)
            assert [e.kind for e in events] == ["anomaly_raised"]
            await buffer.put(events)
            assert await scada.until(lambda g: any("/alerts/" in t for _, t, _, _ in g))
            events = scored(alerter, [0.1, 0.2, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1], t0 + 9)
            assert [e.kind for e in events] == ["anomaly_cleared"]
            await buffer.put(events)
            assert await scada.until(lambda g: sum("/alerts/" in t for _, t, _, _ in g) == 2)
            assert await eventually(lambda: pub.stats()["rows_sent"] == 2)
            st = pub.stats()
        assert await scada.until(lambda g: any(b'"offline"' in b for _, _, b, _ in g))
        alerts = [b for _, b in scada.on(f"{p}/alerts/")]
        assert [a["kind"] for a in alerts] == ["anomaly_raised", "anomaly_cleared"]
        assert alerts[0]["seconds"] == 2 and alerts[1]["seconds"] == 3
        assert alerts[0]["model"] == {"name": "iforest", "version": "7"}
        alarms = [b["active"] for _, b in scada.on(f"{p}/alarms/pump-1.de_accel")]
        assert alarms == [True, False]
        assert st["connected"] and st["published"] >= 5  # status, 2 alerts, 2 alarm states
        # What the status page and /metrics read (the uploader's key names).
        assert st["batches_sent"] == {"accepted": 2} and st["rows_sent"] == 2
        assert st["bytes_sent"] > 0 and st["last_success"] and st["state"] == "connected"
        view = mqtt_view(SimpleNamespace(mqtt=pub))
        assert view["state"] == "closed" and view["broker"] == mosq.url
        assert [b["state"] for _, b in scada.on(f"{p}/status")] == ["online", "offline"]
    finally:
        scada.close()


async def test_broker_outage_alerts_stay_buffered_then_follow_in_order(
        own_broker: Mosquitto, tmp_path: Path) -> None:
    gw, p = "gw-out", "edge/gw-out"
    async with running(tmp_path, own_broker.url, gw) as (buffer, pub):
        assert await eventually(lambda: pub.stats()["ready"])
        own_broker.stop()
        expected = []
        for i in range(60):
            ev = Event("anomaly_raised" if i % 2 == 0 else "anomaly_cleared", f"src-{i % 4}",
                       time.time(), "warning", {"score": 0.9, "threshold": 0.5})
            expected.append(ev.event_id)
            await buffer.put([ev, FeatureVector(f"src-{i % 4}", ev.timestamp - 1,
                                                ev.timestamp, {"rms": 1.0})])
        await asyncio.sleep(1.0)
        assert pub.stats()["rows_sent"] == 0
        assert pub.stats()["batches_failed"].get("broker_down", 0) >= 1
        own_broker.start()
        scada = Scada(own_broker.port, (f"{p}/alerts/#",))
        try:
            assert await scada.until(lambda g: len(g) >= 60, 30)
            await asyncio.sleep(0.3)
            got = [b["event_id"] for _, b in scada.on(f"{p}/alerts/")]
        finally:
            scada.close()
        assert await eventually(lambda: pub.stats()["rows_sent"] == 60)
        # Delivered events are freed (the MQTT sink was their only consumer); the features,
        # which it does not consume, are not its business.
        assert await eventually(lambda: rows(buffer).get("events", 0) == 0)
        assert rows(buffer).get("features") == 60
    assert got == expected  # every alert, in commit order, once


def rows(buffer: Buffer) -> dict[str, int]:
    q = buffer.stats()["rows_queued"]
    assert isinstance(q, dict)
    return q
