"""A silently dead network (no FIN, no RST): both drivers notice, report, and come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers import modbus, opcua
from edge_agent.drivers.base import Driver, DriverOutput
from edge_agent.records import Reading, expand
from edge_agent.settings import parse
from tests.conftest import free_port
from tests.drivers.modbus_server import MbServer, plant_map
from tests.drivers.opcua_server import PlantServer, nid
from tests.drivers.proxy import FreezableProxy

pytestmark = pytest.mark.timeout(120)


class Recorder:
    def __init__(self) -> None:
        self.readings: list[tuple[float, Reading]] = []
        self.arrived = asyncio.Event()

    async def emit(self, out: DriverOutput) -> None:
        now = time.monotonic()
        self.readings.extend((now, r) for r in expand(out) if isinstance(r, Reading))
        self.arrived.set()

    async def until(self, cond: Callable[[], bool], bound: float, what: str) -> float:
        t0 = time.monotonic()
        while not cond():
            left = bound - (time.monotonic() - t0)
            assert left > 0, f"{what}: not within {bound}s"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.2))
            except TimeoutError:
                pass
        return time.monotonic() - t0

    def good_since(self, t: float, sensor: str) -> bool:
        return any(ts >= t and r.sensor_id == sensor and r.value is not None
                   for ts, r in self.readings[-300:])


async def _freeze_and_thaw(drv: Driver, proxy: FreezableProxy, rec: Recorder, sensor: str,
                           poll: float | None) -> None:
    task = asyncio.create_task(run_driver(drv, rec.emit, poll_interval=poll,
                                          backoff=Backoff(initial=0.05, maximum=0.5)))
    try:
        await rec.until(lambda: rec.good_since(0, sensor), 10, "first data")
        proxy.freeze()
        t_freeze = time.monotonic()
        await rec.until(lambda: not drv.health().connected or any(
            ts > t_freeze and r.value is None for ts, r in rec.readings[-50:]), 8,
            "freeze noticed")
        await asyncio.sleep(1.5)  # stay dead through a few reconnect attempts
        proxy.thaw()
        t_thaw = time.monotonic()
        took = await rec.until(lambda: rec.good_since(t_thaw, sensor), 15, "data after thaw")
        print(f"recovered {took:.2f}s after thaw")
        assert took < 15
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await proxy.stop()


async def test_opcua_notices_a_dead_link_and_recovers(ua_shelf: Path) -> None:
    plant = PlantServer(free_port(), shelf=ua_shelf)
    await plant.start()
    proxy = FreezableProxy(plant.port)
    await proxy.start()
    cfg = parse(opcua.Config, {
        "kind": "opcua", "name": "ua", "endpoint": f"opc.tcp://127.0.0.1:{proxy.port}/plant/",
        "timeout": "500ms", "connection_check": "500ms",
        "nodes": [{"sensor_id": "temp", "node_id": nid("Temp"), "publishing_interval": "100ms"}]})
    drv = opcua.create(cfg)
    rec = Recorder()
    try:
        await _freeze_and_thaw(drv, proxy, rec, "temp", None)
    finally:
        await plant.stop()
    errors = drv.health().errors
    assert errors["connection_lost"] + errors["stale_subscription"] >= 1, errors
    assert errors["DriverDisconnected"] >= 1, errors


async def test_modbus_reports_timeouts_then_reconnects() -> None:
    m = plant_map()
    srv = MbServer(m, port=free_port())
    await srv.start()
    proxy = FreezableProxy(srv.port)
    await proxy.start()
    cfg = parse(modbus.Config, {
        "kind": "modbus", "name": "mb", "host": "127.0.0.1", "port": proxy.port,
        "poll_interval": "100ms", "timeout": "300ms", "retries": 0,
        "devices": [{"name": "plc", "points": [
            {"sensor_id": "temp", "table": "input", "address": 0, "data_type": "int16"}]}]})
    drv = modbus.create(cfg)
    rec = Recorder()
    try:
        await _freeze_and_thaw(drv, proxy, rec, "temp", 0.1)
    finally:
        await srv.stop()
    timeouts = [r for _, r in rec.readings if r.value is None]
    assert timeouts and all(r.quality == 0.0 and r.metadata["reason"].startswith("timeout")
                            for r in timeouts)
    assert drv.health().errors["timeout"] >= 1
