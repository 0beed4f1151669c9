"""Sparkplug B mode against a real Mosquitto and a test host application."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.records import format_ts
from edge_agent.sync.delivery import Delivered, RetryAfter
from edge_agent.sync.mqtt import sparkplug_b_pb2 as pb
from edge_agent.sync.mqtt.sparkplug import BdSeqStore, with_seq
from edge_agent.sync.mqtt.sparkplug_sink import SparkplugSink

from .broker import Mosquitto
from .conftest import mqtt_cfg
from .sp_host import Host
from .support import FakeHandle, alert, drive, event_row, eventually

pytestmark = pytest.mark.timeout(60)
SRC = "pump-01.de_accel"


def feature_row(ts: float, score: float, rms: float) -> str:
    return json.dumps({"source_id": SRC, "window_start": format_ts(ts - 0.1),
                       "window_end": format_ts(ts), "values": {"rms": rms, "kurtosis": 3.0},
                       "model": {"name": "m", "version": "1"}, "score": score,
                       "is_anomaly": score > 0.5})


def reading_row(ts: float, *vals: tuple[str, float | None]) -> str:
    return ",".join(json.dumps({"sensor_id": s, "sensor_type": "t", "value": v, "unit": "u",
                                "timestamp": format_ts(ts), "quality": 1.0}) for s, v in vals)


@contextlib.asynccontextmanager
async def node(mosq: Mosquitto, state: Path, group: str, host_id: str | None = None,
               handle: FakeHandle | None = None,
               sensors: dict[str, str] | None = None) -> AsyncIterator[SparkplugSink]:
    sp: dict[str, Any] = {"group_id": group, "edge_node_id": "gw1"}
    if host_id:
        sp["primary_host_id"] = host_id
    sink = SparkplugSink(mqtt_cfg(mosq.url, mode="sparkplug", sparkplug=sp), "gw-test", state,
                         devices=[SRC, "plc-1"], sensor_devices=sensors)
    await sink.start()
    task = asyncio.create_task(drive(sink, handle or FakeHandle()))
    try:
        yield sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sink.close()


def test_bdseq_store_and_seq_field(tmp_path: Path) -> None:
    store = BdSeqStore(tmp_path / "bd")
    assert [store.take() for _ in range(3)] == [0, 1, 2]
    (tmp_path / "bd").write_text("255\n")
    assert [BdSeqStore(tmp_path / "bd").take() for _ in range(2)] == [255, 0]
    p = pb.Payload(timestamp=5)
    assert pb.Payload.FromString(with_seq(p.SerializeToString(), 300)).seq == 300


async def test_births_aliases_ddata_and_seq(mosq: Mosquitto, tmp_path: Path) -> None:
    host, h = Host(mosq.port, "g-data"), FakeHandle()
    try:
        async with node(mosq, tmp_path, "g-data", handle=h) as sink:
            assert await host.until_kind("DBIRTH", 2)
            now = time.time()
            h.commit("features", *(feature_row(now + i, 0.1 * i, 1.0 + i) for i in range(8)))
            h.commit("readings", reading_row(now, ("plc-1.oil_temp", 61.5), ("press-7.p", 2.0)),
                     reading_row(now + 1, ("plc-1.oil_temp", 62.0), ("press-7.p", None)))
            h.commit("events", alert("anomaly_raised", SRC))
            assert await host.until_kind("DDATA", 3)
            n0 = host.count("DDATA")
            h.max_rows = 1  # one DDATA per batch: seq wraps past 255
            h.commit("features", *(feature_row(now + 10 + i, 0.2, 2.0) for i in range(300)))
            assert await host.until_kind("DDATA", n0 + 300, 30)
            stats = sink.stats()
        await asyncio.sleep(0.2)
        kinds = host.kinds()
        assert kinds[:3] == ["NBIRTH", f"DBIRTH:{SRC}", "DBIRTH:plc-1"]
        assert "DBIRTH:press-7" in kinds  # a new device is born before its data
        assert kinds.index("DBIRTH:press-7") < kinds.index("DDATA:press-7")
        v = host.check()
        assert v.errors == []
        assert [x for x, _ in v.values[(SRC, "features/rms")]][:8] == [1.0 + i for i in range(8)]
        assert v.values[("plc-1", "oil_temp")] == [(61.5, False), (62.0, False)]
        assert v.values[("press-7", "p")] == [(2.0, False), (None, False)]
        assert v.values[(SRC, "alarm/active")] == [(True, False)]
        # A clean stop: a DDEATH per device, then the NDEATH with the birth's bdSeq.
        assert sorted(kinds[-4:-1]) == sorted(f"DDEATH:{d}" for d in (SRC, "plc-1", "press-7"))
        assert kinds[-1] == "NDEATH" and v.deaths == [v.bdseq]
        qos = {(t.split("/")[2], q) for (_, t, _, r), q in zip(host.got, host.qos, strict=True)}
        assert qos == {("NBIRTH", 0), ("DBIRTH", 0), ("DDATA", 0), ("DDEATH", 0),
                       ("NDEATH", 1)}  # the specification's QoS; nothing retained
        assert not any(r for _, _, _, r in host.got)
        assert stats["ddata"] > 0 and stats["born"] and all(isinstance(o, Delivered)
                                                            for o in h.outcomes)
    finally:
        host.close()


async def test_ndeath_will_pairs_bdseq_and_bdseq_survives_restart(mosq: Mosquitto,
                                                                 tmp_path: Path) -> None:
    host = Host(mosq.port, "g-bd")
    try:
        async with node(mosq, tmp_path, "g-bd") as sink:
            assert await host.until_kind("NBIRTH")
            first = host.check().bdseq
            assert first is not None
            # The connection breaks without DISCONNECT: the broker publishes the will.
            s = sink.link.session
            assert s is not None
            sock = s.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
            assert await host.until_kind("NDEATH")
            assert await host.until_kind("NBIRTH", 2)  # reconnected: born again
            await host.until_kind("DBIRTH", 4)
        assert await host.until_kind("NDEATH", 2)
        async with node(mosq, tmp_path, "g-bd"):  # a restart of the agent: same state dir
            assert await host.until_kind("NBIRTH", 3)
            await host.until_kind("DBIRTH", 6)
        assert await host.until_kind("NDEATH", 3)
        births = [next(m.long_value for m in x.payload.metrics if m.name == "bdSeq")
                  for x in host.msgs() if x.kind == "NBIRTH"]
        assert births == [first, (first + 1) % 256, (first + 2) % 256]
        v = host.check()
        assert v.errors == [] and v.deaths == births
    finally:
        host.close()


async def test_rebirth_on_command_and_garbage_ignored(mosq: Mosquitto, tmp_path: Path) -> None:
    host = Host(mosq.port, "g-rb")
    try:
        async with node(mosq, tmp_path, "g-rb") as sink:
            assert await host.until_kind("DBIRTH", 2)
            host.rebirth("gw1", b"\xff\xff garbage")
            host.rebirth("gw1", json.dumps({"rebirth": True}).encode())
            other = pb.Payload()
            other.metrics.add(name="Node Control/Reboot", boolean_value=True)
            host.rebirth("gw1", other.SerializeToString())
            host.publish("spBv1.0/g-rb/DCMD/gw1/plc-1", b"\x00\x01\x02garbage")
            host.rebirth("gw1")
            assert await host.until_kind("NBIRTH", 2)
            assert await host.until_kind("DBIRTH", 4)
            st = sink.stats()
        assert host.count("NBIRTH") == 2  # the garbage caused nothing
        assert st["rebirths"] == 1 and st["bad_commands"] >= 2 and st["ignored_commands"] >= 1
        v = host.check()
        assert v.errors == [] and v.births == 2
        nb = [x.payload for x in host.msgs() if x.kind == "NBIRTH"]
        assert len({next(m.long_value for m in p.metrics if m.name == "bdSeq") for p in nb}) == 1
    finally:
        host.close()


async def test_primary_host_state_offline_then_historical(mosq: Mosquitto,
                                                         tmp_path: Path) -> None:
    host, h = Host(mosq.port, "g-ph", host_id="scada-ph"), FakeHandle()
    host.state(False)
    try:
        async with node(mosq, tmp_path, "g-ph", host_id="scada-ph", handle=h) as sink:
            await asyncio.sleep(0.5)
            assert host.count("NBIRTH") == 0  # waits for its primary host
            host.state(True)
            assert await host.until_kind("DBIRTH", 2)
            h.commit("features", feature_row(time.time(), 0.1, 1.0))
            assert await host.until_kind("DDATA", 1)
            host.state(False)
            assert await host.until_kind("NDEATH", 1)
            t_off = time.time()
            h.commit("features", *(feature_row(t_off + i * 0.01, 0.7, 10.0 + i)
                                   for i in range(5)))
            await asyncio.sleep(0.6)
            assert any(isinstance(o, RetryAfter) and o.kind == "host_offline"
                       for o in h.outcomes)
            assert host.count("DDATA") == 1 and h.backlog == 5  # kept in the buffer
            host.state(True)
            assert await host.until_kind("NBIRTH", 2)
            assert await eventually(lambda: h.backlog == 0)
            h.commit("features", feature_row(time.time() + 1, 0.1, 99.0))
            assert await host.until_kind("DDATA", 3)
            st = sink.stats()
        v = host.check()
        assert v.errors == []
        rms = v.values[(SRC, "features/rms")]
        assert rms == [(1.0, False), *((10.0 + i, True) for i in range(5)), (99.0, False)]
        assert st["historical_metrics"] >= 5
    finally:
        host.state(False)
        host.close()


async def test_plc_device_dies_and_is_reborn_with_its_driver(mosq: Mosquitto,
                                                            tmp_path: Path) -> None:
    host, h = Host(mosq.port, "g-plc"), FakeHandle()
    sensors = {"press-07.oil_temp": "plc-1", "press-07.pressure": "plc-1"}
    try:
        async with node(mosq, tmp_path, "g-plc", handle=h, sensors=sensors):
            assert await host.until_kind("DBIRTH", 2)
            now = time.time()
            h.commit("readings", reading_row(now, ("press-07.oil_temp", 60.0),
                                             ("press-07.pressure", 3.5)))
            assert await host.until_kind("DDATA")
            h.commit("events", event_row("driver_disconnected", "plc-1"))
            assert await host.until_kind("DDEATH")
            h.commit("events", event_row("driver_connected", "plc-1", severity="info"))
            h.commit("readings", reading_row(now + 1, ("press-07.oil_temp", 61.0)))
            assert await host.until_kind("DDATA", 2)
        kinds = host.kinds()
        i = kinds.index("DDEATH:plc-1")
        assert kinds[i + 1:i + 3] == ["DBIRTH:plc-1", "DDATA:plc-1"]
        v = host.check()
        assert v.errors == []
        assert v.values[("plc-1", "press-07.oil_temp")] == [(60.0, False), (61.0, False)]
        reborn = [x.payload for x in host.msgs() if x.kind == "DBIRTH" and x.device == "plc-1"]
        assert {m.name for m in reborn[-1].metrics} == {"press-07.oil_temp",
                                                          "press-07.pressure"}
    finally:
        host.close()


async def test_connection_dropped_mid_burst_loses_no_ddata(mosq: Mosquitto,
                                                           tmp_path: Path) -> None:
    host, h = Host(mosq.port, "g-drop"), FakeHandle(max_rows=10)
    now = time.time()
    try:
        async with node(mosq, tmp_path, "g-drop", handle=h) as sink:
            assert await host.until_kind("DBIRTH", 2)
            h.commit("features", *(feature_row(now + i * 0.01, 0.1, float(i))
                                   for i in range(600)))
            assert await host.until_kind("DDATA", 5)
            s = sink.link.session
            assert s is not None
            sock = s.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(2)  # QoS 0 data in flight when the connection drops
            assert await host.until_kind("NBIRTH", 2)
            assert await eventually(lambda: h.backlog == 0, 30)
        assert any(isinstance(o, RetryAfter) for o in h.outcomes)  # it did hit a batch
        v = host.check()
        assert v.errors == []  # seq continuous within each session, births first
        rms = [x for x, _ in v.values[(SRC, "features/rms")]]
        assert list(dict.fromkeys(rms)) == [float(i) for i in range(600)]  # none lost, in order
    finally:
        host.close()
