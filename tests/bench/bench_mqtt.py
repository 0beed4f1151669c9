"""MQTT benchmark against a real Mosquitto on loopback (prints figures; not a timed test).

* latency from the commit of an ``anomaly_raised`` event to its arrival at a subscriber
  (p50/p99; goal p99 <= 100 ms) - the sink driven by an in-memory delivery handle that wakes on
  commit, so this is the sink + broker path (the buffer's commit wake-up comes on top);
* throughput of a 10,000-event backlog drained after an outage (goal >= 5,000 events/s);
* CPU of Sparkplug DDATA for 1,000 metrics at 1 Hz (readings rows parsed, encoded, published).

    .venv/bin/python tests/bench/bench_mqtt.py [--latency-events 500] [--backlog 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge_agent.records import Event, format_ts  # noqa: E402
from edge_agent.settings import parse  # noqa: E402
from edge_agent.sync.buffer import Buffer, BufferConfig  # noqa: E402
from edge_agent.sync.mqtt import JsonSink, SparkplugSink  # noqa: E402
from edge_agent.sync.mqtt.config import MqttConfig  # noqa: E402
from edge_agent.sync.mqtt.publisher import MqttPublisher  # noqa: E402
from tests.sync.mqtt.broker import Mosquitto  # noqa: E402
from tests.sync.mqtt.support import FakeHandle, Scada, alert, drive  # noqa: E402


def cfg(url: str, **kw: Any) -> MqttConfig:
    return parse(MqttConfig, {"url": url, "backoff_initial": "50ms", "backoff_max": "1s",
                              **kw}, "mqtt")


@contextlib.asynccontextmanager
async def driven(sink: Any, h: FakeHandle) -> Any:
    await sink.start()
    task = asyncio.create_task(drive(sink, h, retry=0.02))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sink.close()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def latency(m: Mosquitto, n: int, label: str) -> None:
    h = FakeHandle()
    sink = JsonSink(cfg(m.url), "bench-lat")
    scada = Scada(m.port, ("edge/bench-lat/alerts/#",))
    async with driven(sink, h):
        assert await sink.link.wait_ready(10)
        for i in range(n):
            h.commit("events", alert("anomaly_raised", f"pump-{i % 4}"))
            await asyncio.sleep(0.02)
        assert await scada.until(lambda g: len(g) >= n, 30)
    arrive = {json.loads(p)["event_id"]: t for t, _, p, _ in scada.got}
    lat = [(arrive[e] - t0) * 1000 for e, t0 in h.commit_times.items()]
    scada.close()
    print(f"latency commit -> subscriber ({n} alerts, 50/s, {label}): p50 {pct(lat, 50):.2f} "
          f"ms, p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms (goal p99 <= 100 ms)")


async def drain(m: Mosquitto, n: int) -> None:
    h = FakeHandle(max_rows=1000)
    rows = [alert("anomaly_raised" if i % 2 == 0 else "anomaly_cleared", f"pump-{i % 20}")
            for i in range(n)]
    h.commit("events", *rows)  # the backlog built up while the broker was away
    sink = JsonSink(cfg(m.url), "bench-drain")  # default max_inflight
    scada = Scada(m.port, ("edge/bench-drain/alerts/#",))
    t0 = time.perf_counter()
    cpu0 = time.thread_time()  # the event loop's thread: the sink (the subscriber has its own)
    async with driven(sink, h):
        assert await scada.until(lambda g: len(g) >= n, 120)
        t1 = time.perf_counter()
        cpu = time.thread_time() - cpu0
        msgs = sink.stats()["published"]
    ids = [json.loads(p)["event_id"] for _, _, p, _ in scada.got]
    assert ids == [json.loads(r)["event_id"] for r in rows], "order or completeness broken"
    scada.close()
    dt = t1 - t0
    print(f"backlog drain: {n} events ({msgs} MQTT messages incl. status and retained alarm "
          f"states) in {dt:.2f} s = {n / dt:,.0f} events/s (goal >= 5,000 events/s); "
          f"event-loop CPU {cpu:.2f} s = {n / cpu:,.0f} events per CPU-second")


def reading_row(ts: float, n: int, k: int) -> str:
    return ",".join(json.dumps({"sensor_id": f"plc-1.tag{j:04d}", "sensor_type": "t",
                                "value": float(k + j), "unit": "u", "timestamp": format_ts(ts),
                                "quality": 1.0}) for j in range(n))


async def ddata_cpu(m: Mosquitto, metrics: int, seconds: int, state: Path) -> None:
    h = FakeHandle()
    sink = SparkplugSink(cfg(m.url, mode="sparkplug", sparkplug={"group_id": "bench"}),
                         "bench-sp", state, devices=["plc-1"])
    scada = Scada(m.port, ("spBv1.0/bench/DDATA/#",))
    rows = [reading_row(0.0, metrics, k) for k in range(seconds)]  # made before measuring
    async with driven(sink, h):
        assert await sink.link.wait_ready(10)
        await asyncio.sleep(0.5)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for k in range(seconds):
            h.commit("readings", rows[k].replace(format_ts(0.0), format_ts(time.time())))
            await asyncio.sleep(max(0.0, t0 + k + 1 - time.perf_counter()))
        assert await scada.until(lambda g: len(g) >= seconds, 30)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    size = statistics.mean(len(p) for _, _, p, _ in scada.got)
    scada.close()
    print(f"Sparkplug DDATA, {metrics} metrics at 1 Hz for {seconds} s: process CPU "
          f"{cpu / wall * 100:.1f} % of one core ({cpu / seconds * 1000:.1f} ms per DDATA incl. "
          f"parsing the rows and the counting subscriber), payload {size / 1024:.1f} KiB")


@contextlib.asynccontextmanager
async def agent_side(tmp: Path, url: str, gw: str, **kw: Any) -> Any:
    """The real path: SQLite buffer, the MQTT sink's handle and the generic delivery loop."""
    buffer = Buffer(tmp / f"{gw}.db", BufferConfig())
    await buffer.start()
    pub = MqttPublisher(buffer, cfg(url, **kw), gw, tmp, devices=["plc-1"])
    task = asyncio.create_task(pub.run())
    try:
        yield buffer, pub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pub.flush(5.0)
        await buffer.close()


async def latency_buffer(m: Mosquitto, n: int, tmp: Path) -> None:
    scada = Scada(m.port, ("edge/bench-buf/alerts/#",))
    committed: dict[str, float] = {}
    async with agent_side(tmp, m.url, "bench-buf") as (buffer, pub):
        assert await pub.sink.link.wait_ready(10)
        for i in range(n):
            ev = Event("anomaly_raised", f"pump-{i % 4}", time.time(), "warning",
                       {"score": 0.9, "threshold": 0.5})
            await buffer.put([ev])  # returns once committed
            committed[ev.event_id] = time.perf_counter()
            await asyncio.sleep(0.02)
        assert await scada.until(lambda g: len(g) >= n, 30)
    arrive = {json.loads(p)["event_id"]: t for t, _, p, _ in scada.got}
    lat = [(arrive[e] - t0) * 1000 for e, t0 in committed.items()]
    scada.close()
    print(f"latency buffer commit -> subscriber through the delivery loop ({n} alerts, 50/s): "
          f"p50 {pct(lat, 50):.2f} ms, p99 {pct(lat, 99):.2f} ms, max {max(lat):.2f} ms")


async def drain_buffer(m: Mosquitto, n: int, tmp: Path) -> None:
    m.stop()  # the outage: alerts pile up in the buffer
    async with agent_side(tmp, m.url, "bench-bdrain") as (buffer, _pub):
        evs = [Event("anomaly_raised" if i % 2 == 0 else "anomaly_cleared", f"pump-{i % 20}",
                     time.time(), "warning", {"score": 0.9, "threshold": 0.5})
               for i in range(n)]
        for i in range(0, n, 1000):
            await buffer.put(evs[i:i + 1000])
        m.start()
        scada = Scada(m.port, ("edge/bench-bdrain/alerts/#",))
        t0, cpu0 = time.perf_counter(), time.thread_time()
        assert await scada.until(lambda g: len(g) >= n, 120)
        cpu = time.thread_time() - cpu0
    first, last = scada.got[0][0], scada.got[-1][0]
    ids = [json.loads(p)["event_id"] for _, _, p, _ in scada.got]
    assert ids == [e.event_id for e in evs], "order or completeness broken"
    scada.close()
    print(f"backlog drain through the SQLite buffer after an outage: {n} alerts, first "
          f"{first - t0:.2f} s after the broker's restart (reconnect backoff), then "
          f"{n / (last - first):,.0f} events/s; event-loop CPU {cpu:.2f} s (sink + buffer "
          f"handle + delivery loop)")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-events", type=int, default=500)
    ap.add_argument("--backlog", type=int, default=10_000)
    ap.add_argument("--metrics", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    logging.getLogger("edge_agent").setLevel(logging.CRITICAL)  # the outage's connect errors
    with tempfile.TemporaryDirectory() as tmp:
        m = Mosquitto(Path(tmp) / "plain", nodelay=False)
        m.start()
        try:
            await latency(m, a.latency_events, "Mosquitto defaults")
        finally:
            m.stop()
        m = Mosquitto(Path(tmp) / "mosquitto")
        m.start()
        try:
            await latency(m, a.latency_events, "Mosquitto set_tcp_nodelay true")
            await latency_buffer(m, a.latency_events, Path(tmp))
            await drain(m, a.backlog)
            await drain_buffer(m, a.backlog, Path(tmp))
            await ddata_cpu(m, a.metrics, a.seconds, Path(tmp))
        finally:
            m.stop()


if __name__ == "__main__":
    asyncio.run(main())
