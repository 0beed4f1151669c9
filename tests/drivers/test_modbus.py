"""Modbus driver against a real pymodbus server on loopback (and RTU over a pty pair)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import Driver, DriverDisconnected, DriverOutput
from edge_agent.drivers.modbus import Config, ModbusDriver, create
from edge_agent.records import Reading, expand
from edge_agent.settings import ConfigError, parse
from tests.conftest import free_port
from tests.drivers.leaks import ResourceCount
from tests.drivers.modbus_server import FAIL_BASE, SLOW_BASE, MbServer, PtyLink, plant_map
from tests.drivers.proxy import SilentUnitGateway
from tests.drivers.typed import num, sub

pytestmark = pytest.mark.timeout(120)


def tcp_config(port: int, points: list[dict[str, Any]], **extra: Any) -> Config:
    raw = {"kind": "modbus", "name": "mb", "host": "127.0.0.1", "port": port,
           "poll_interval": "100ms", "timeout": "300ms", "retries": 0, "max_gap": 20,
           "devices": [{"name": "plc", "unit_id": 1, "points": points}], **extra}
    return parse(Config, raw)


@pytest.fixture
async def server() -> AsyncIterator[MbServer]:
    srv = MbServer(plant_map(), port=free_port())
    await srv.start()
    yield srv
    await srv.stop()


def by_id(out: DriverOutput) -> dict[str, Reading]:
    return {r.sensor_id: r for r in expand(out) if isinstance(r, Reading)}


async def test_every_type_and_order_decodes_exactly(server: MbServer) -> None:
    drv = create(tcp_config(server.port, server.map.points))
    assert isinstance(drv, Driver) and not drv.streaming
    await drv.open()
    try:
        got = by_id(await drv.read())
    finally:
        await drv.close()
    for sid, want in server.map.expected.items():
        r = got[sid]
        assert r.quality == 1.0, (sid, r.metadata)
        assert r.value is not None and math.isclose(r.value, want, rel_tol=1e-12), (sid, r.value)
    # float32 is exact for -3.25; 64-bit integers are exact within float precision
    assert got["h.float32.bl"].value == -3.25
    assert got["h.int64.ll"].value == -1_234_567_890_123
    # the string is not a measurement: it is in health, not in the readings
    assert "h.serial" not in got
    assert drv.health().snapshot()["text"] == {"h.serial": "VT100-7"}


async def test_illegal_address_blanks_only_that_point_and_splits_the_block(
        server: MbServer) -> None:
    drv = create(tcp_config(server.port, server.map.points))
    await drv.open()
    try:
        blocks_before = num(drv.health().detail, "blocks")
        for _ in range(2):  # the split persists: second poll is clean
            await asyncio.sleep(0.1)  # one poll interval: the device is due again
            got = by_id(await drv.read())
            hole = got["h.hole"]
            assert hole.value is None and hole.quality == 0.0
            assert "ILLEGAL_ADDRESS" in hole.metadata["reason"]
            assert got["h.before_hole"].value == 11.0 and got["h.after_hole"].value == 22.0
        h = drv.health().snapshot()
        assert num(h, "blocks") > blocks_before
        assert "ILLEGAL_ADDRESS" in sub(h, "bad_points")["h.hole"]
        assert sub(h, "errors")["exception_illegal_address"] >= 2
    finally:
        await drv.close()


async def test_exception_response_and_timeout_give_quality_zero_and_never_stop(
        server: MbServer) -> None:
    drv = create(tcp_config(server.port, server.map.points, max_gap=0))
    await drv.open()
    try:
        server.faults.device_failure = True
        server.faults.slow = 1.0     # > timeout 300 ms, retries 0
        got = by_id(await drv.read())
        assert got["i.failing"].value is None
        assert "DEVICE_FAILURE" in got["i.failing"].metadata["reason"]
        assert got["i.slow"].value is None
        assert got["i.slow"].metadata["reason"].startswith("timeout")
        assert got["i.temp"].quality == 1.0  # other blocks unaffected
        h = drv.health().snapshot()
        assert set(sub(h, "bad_points")) == {"i.failing", "i.slow", "h.hole"}
        errs = sub(h, "errors")
        assert errs["timeout"] == 1 and errs["exception_device_failure"] == 1
        # Device recovers: values and health come back; the late answer to the timed-out
        # request must not be taken for a later one.
        server.faults.device_failure = False
        server.faults.slow = 0.0
        await asyncio.sleep(1.1)
        server.set_input(SLOW_BASE, 77)
        server.set_input(FAIL_BASE, 5)
        server.set_input(0, 655 + 10)
        got = by_id(await drv.read())
        assert got["i.slow"].value == 77.0 and got["i.failing"].value == 5.0
        assert got["i.temp"].value is not None and math.isclose(got["i.temp"].value, 26.5)
        assert set(drv.health().bad_points) == {"h.hole"}
    finally:
        await drv.close()


async def test_per_device_poll_intervals() -> None:
    m = plant_map()
    srv = MbServer(m, port=free_port())
    await srv.start()
    raw = {"kind": "modbus", "name": "mb", "host": "127.0.0.1", "port": srv.port,
           "poll_interval": "100ms",
           "devices": [{"name": "fast", "unit_id": 1,
                        "points": [{"sensor_id": "fast.t", "table": "input", "address": 0}]},
                       {"name": "slow", "unit_id": 1, "poll_interval": "400ms",
                        "points": [{"sensor_id": "slow.t", "table": "input", "address": 0}]}]}
    drv = create(parse(Config, raw))
    await drv.open()
    counts = {"fast.t": 0, "slow.t": 0}
    try:
        t_end = time.monotonic() + 1.2
        while time.monotonic() < t_end:
            for r in expand(await drv.read()):
                assert isinstance(r, Reading)
                counts[r.sensor_id] += 1
            await asyncio.sleep(0.1)
    finally:
        await drv.close()
        await srv.stop()
    assert counts["fast.t"] >= 10
    assert 3 <= counts["slow.t"] <= 4


async def test_open_fails_clearly_and_read_after_server_loss_raises(server: MbServer) -> None:
    drv = create(tcp_config(free_port(), server.map.points))
    with pytest.raises(DriverDisconnected, match="cannot connect"):
        await drv.open()
    await drv.close()
    await drv.close()  # idempotent
    drv = create(tcp_config(server.port, server.map.points))
    await drv.open()
    assert drv.health().connected
    await server.stop()
    await asyncio.sleep(0.05)
    with pytest.raises(DriverDisconnected):
        await drv.read()
    await drv.close()
    assert not drv.health().connected


async def test_server_restarts_ten_times_without_leaks() -> None:
    m = plant_map()
    srv = MbServer(m, port=free_port())
    await srv.start()
    drv = create(tcp_config(srv.port, m.points))
    got: list[tuple[float, Reading]] = []
    arrived = asyncio.Event()

    async def emit(out: DriverOutput) -> None:
        t = time.monotonic()
        got.extend((t, r) for r in expand(out) if isinstance(r, Reading) and r.value is not None)
        arrived.set()

    base = ResourceCount.now()
    task = asyncio.create_task(run_driver(drv, emit, poll_interval=0.1,
                                          backoff=Backoff(initial=0.05, maximum=0.5)))
    await asyncio.wait_for(arrived.wait(), 5)
    gaps = []
    for i in range(10):
        await srv.stop()
        await asyncio.sleep(0.3 if i % 2 else 0.05)
        await srv.start()
        t0 = time.monotonic()
        srv.set_input(0, 1000 + i)
        while not any(t >= t0 and r.sensor_id == "i.temp" and r.value is not None
                      and math.isclose(r.value, (1000 + i) * 0.1 - 40) for t, r in got[-200:]):
            assert time.monotonic() - t0 < 5.0, f"no data within 5 s after restart {i}"
            arrived.clear()
            await asyncio.wait_for(arrived.wait(), 5)
        gaps.append(time.monotonic() - t0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # the server notices the client's FIN and drops its side
    ResourceCount.now().assert_same_as(base)  # same server state as at `base`
    await srv.stop()
    h = drv.health().snapshot()
    assert h["connected"] is False
    assert sub(h, "errors").get("DriverDisconnected", 0) >= 10
    assert max(gaps) < 2.0, gaps


async def test_rtu_over_a_pty_pair() -> None:
    link = PtyLink()
    m = plant_map()
    srv = MbServer(m, serial_port=link.path1)
    await srv.start()
    pts = [p for p in m.points if p["sensor_id"].startswith(("i.temp", "i.vel", "h.float64",
                                                              "c.", "h.status"))]
    raw = {"kind": "modbus", "name": "rtu", "transport": "rtu", "serial_port": link.path2,
           "baudrate": 115200, "parity": "N", "stopbits": 1, "timeout": "500ms", "retries": 0,
           "devices": [{"name": "tx", "unit_id": 1, "points": pts}]}
    drv = create(parse(Config, raw))
    try:
        await drv.open()
        got = by_id(await drv.read())
        assert len(got) == len(pts)
        for sid, r in got.items():
            assert r.value is not None and math.isclose(r.value, m.expected[sid]), sid
        # Cable pulled: timeouts give quality 0 with a reason; the driver keeps going.
        link.plugged = False
        got = by_id(await drv.read())
        assert all(r.value is None and r.metadata["reason"].startswith("timeout")
                   for r in got.values())
        link.plugged = True
        await asyncio.sleep(0.6)  # let any late frame drain
        got = by_id(await drv.read())
        assert all(r.quality == 1.0 for r in got.values()), {k: r.metadata for k, r in
                                                              got.items()}
    finally:
        await drv.close()
        await srv.stop()
        link.close()


def test_config_problems_are_all_reported() -> None:
    raw = {"kind": "modbus", "name": "mb", "transport": "tcp", "poll_interval": "1s",
           "devices": [{"name": "a", "poll_interval": "100ms", "points": [
               {"sensor_id": "x", "table": "coil", "address": 1, "data_type": "int16"},
               {"sensor_id": "x", "address": 2, "data_type": "float32", "bit": 3},
               {"sensor_id": "y", "address": 3, "data_type": "uint16", "bit": 12,
                "bit_count": 8}]}]}
    with pytest.raises(ConfigError) as e:
        parse(Config, raw)
    text = str(e.value)
    for needle in ("must be \"bool\"", "bitfields need an integer", "do not fit in uint16"):
        assert needle in text, needle
    # cross-table checks (run once every table in it is valid)
    raw["devices"][0]["points"] = [{"sensor_id": "x", "address": 1},  # type: ignore[index]
                                   {"sensor_id": "x", "address": 2}]
    with pytest.raises(ConfigError) as e:
        parse(Config, raw)
    text = str(e.value)
    for needle in ("host: is required", "poll_interval: must be >=", "duplicate sensor_id"):
        assert needle in text, needle
    raw["devices"][0]["points"] = [{"sensor_id": "z", "address": 70000, "wat": 1,  # type: ignore[index]
                                    "data_type": "int128"}]
    with pytest.raises(ConfigError) as e:
        parse(Config, raw)
    text = str(e.value)
    for needle in ("address: must be <= 65535", "wat: unknown key", "data_type: must be one of"):
        assert needle in text, needle


def test_driver_type() -> None:
    cfg = tcp_config(1502, [{"sensor_id": "a", "address": 0}])
    assert isinstance(create(cfg), ModbusDriver)


async def test_absent_unit_does_not_starve_a_healthy_one_on_the_same_connection() -> None:
    m = plant_map()
    srv = MbServer(m, port=free_port())
    await srv.start()
    gateway = SilentUnitGateway(srv.port, {9})  # unit 9: no answer at all
    await gateway.start()
    raw = {"kind": "modbus", "name": "mb", "host": "127.0.0.1", "port": gateway.port,
           "poll_interval": "100ms", "timeout": "200ms", "retries": 0,
           "devices": [{"name": "dead", "unit_id": 9, "points": [
                            {"sensor_id": "dead.a", "table": "input", "address": 0},
                            {"sensor_id": "dead.b", "table": "holding", "address": 0}]},
                       {"name": "ok", "unit_id": 1, "points": [
                            {"sensor_id": "ok.t", "table": "input", "address": 0}]}]}
    drv = create(parse(Config, raw))
    got: list[Reading] = []

    async def emit(out: DriverOutput) -> None:
        got.extend(r for r in expand(out) if isinstance(r, Reading))

    task = asyncio.create_task(run_driver(drv, emit, poll_interval=0.1,
                                          backoff=Backoff(initial=0.05, maximum=0.5)))
    seconds = 4.0
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await gateway.stop()
    await srv.stop()
    healthy = [r for r in got if r.sensor_id == "ok.t" and r.value is not None]
    dead = [r for r in got if r.sensor_id.startswith("dead.")]
    # 40 polls in 4 s at 100 ms; two 200 ms timeouts per poll would leave about 8
    assert len(healthy) >= 0.85 * seconds / 0.1, len(healthy)
    assert dead and all(r.value is None and r.metadata["reason"].startswith("timeout")
                        for r in dead)
    h = drv.health().snapshot()
    assert h["silent_units"] == ["dead"]
    assert h["errors"]["timeout"] <= 4  # type: ignore[index]  # probed at 2 s, 4 s ... gaps
    assert "DriverDisconnected" not in h["errors"]  # type: ignore[operator]
