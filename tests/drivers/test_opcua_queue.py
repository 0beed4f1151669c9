"""Values lost before they reach us: the default server-side queue holds every sample of a
publishing interval (with room for jitter), and the server's Overflow bit is counted per node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from edge_agent.drivers.opcua import Config, Node, create
from edge_agent.drivers.opcua_convert import overflowed, status_name
from edge_agent.drivers.opcua_items import queue_size_of
from edge_agent.records import Reading, expand
from edge_agent.settings import parse as build
from tests.conftest import free_port
from tests.drivers.opcua_server import PlantServer, nid

pytestmark = pytest.mark.timeout(60)


def test_default_queue_size_follows_the_interval_ratio() -> None:
    def q(**kw: Any) -> int:
        return queue_size_of(build(Node, {"sensor_id": "a", "node_id": "i=1", **kw}))

    assert q() == 3                                           # sampling = publishing
    assert q(publishing_interval="1s", sampling_interval="100ms") == 16
    assert q(publishing_interval="1s", sampling_interval="0ms") == 151  # fastest: 10 ms
    assert q(publishing_interval="1s", sampling_interval="1ms") == 151
    assert q(publishing_interval="100s", sampling_interval="0ms") == 1000  # capped
    assert q(queue_size=1) == 1                               # as configured
    assert q(mode="polling") == 1


def test_overflow_bit() -> None:
    assert overflowed(ua.StatusCode(ua.UInt32(0x00000480)))
    assert not overflowed(ua.StatusCode(ua.UInt32(0x00000080)))          # InfoType not DataValue
    assert not overflowed(ua.StatusCode(ua.UInt32(0))) and not overflowed(None)
    assert status_name(ua.StatusCode(ua.UInt32(0x00000480))) == "Good"
    assert status_name(ua.StatusCode(ua.UInt32(0x40900480))) == "UncertainLastUsableValue"


@pytest.fixture
async def plant(ua_shelf: Path) -> AsyncIterator[PlantServer]:
    srv = PlantServer(free_port(), shelf=ua_shelf, update_s=0.02)
    await srv.start()
    yield srv
    await srv.stop()


async def _run(plant: PlantServer, **node: Any) -> tuple[int, int, dict[str, object]]:
    """(values of "Temp" received, server updates meanwhile, health) over ~2 s."""
    cfg = build(Config, {"kind": "opcua", "name": "ua", "endpoint": plant.url, "timeout": "2s",
                         "nodes": [{"sensor_id": "temp", "node_id": nid("Temp"),
                                    "publishing_interval": "200ms",
                                    "sampling_interval": "20ms", **node}]})
    drv = create(cfg)
    ticks_at: list[tuple[int, float]] = []
    await drv.open()
    try:
        await asyncio.wait_for(drv.read(), 5)            # the initial value
        tick0, wall0 = plant.tick, time.time()
        got: list[Reading] = []
        t_end = time.monotonic() + 2.6
        while time.monotonic() < t_end:
            got.extend(r for r in expand(await asyncio.wait_for(drv.read(), 2))
                       if isinstance(r, Reading) and r.value is not None)
            if plant.tick - tick0 >= 80 and not ticks_at:
                ticks_at.append((plant.tick - tick0, time.time()))
        # the values the server wrote in [wall0, wall1], counted once the publishes holding
        # them (every 200 ms) have arrived
        ticks, wall1 = ticks_at[0] if ticks_at else (plant.tick - tick0, time.time())
        got = [r for r in got if wall0 < r.timestamp <= wall1]
    finally:
        await drv.close()
    return len(got), ticks, drv.health().snapshot()


async def test_default_queue_keeps_every_value_and_overflows_are_counted(
        plant: PlantServer) -> None:
    n, ticks, h = await _run(plant)                   # default queue: 1.5 x 10 + 1 = 16
    assert ticks >= 40
    assert n >= 0.95 * ticks, (n, ticks)
    assert "overflows" not in h and plant.overflows == 0
    n1, ticks1, h1 = await _run(plant, queue_size=1)  # what the default used to be
    assert n1 < 0.5 * ticks1, (n1, ticks1)
    overflows = h1["overflows"]
    assert isinstance(overflows, dict) and overflows["temp"] >= 5
    assert h1["errors"]["overflow"] == overflows["temp"]  # type: ignore[index]


async def test_a_waveform_node_that_sends_almost_nothing_is_warned_once(
        plant: PlantServer, caplog: pytest.LogCaptureFixture) -> None:
    cfg = build(Config, {"kind": "opcua", "name": "ua", "endpoint": plant.url, "timeout": "2s",
                         "nodes": [{"sensor_id": "still", "node_id": nid("Still"),
                                    "waveform": True, "sample_rate": 1000.0,
                                    "sampling_interval": "0ms",
                                    "publishing_interval": "100ms"},
                                   {"sensor_id": "vib", "node_id": nid("Vib"), "waveform": True,
                                    "sample_rate": 25600.0, "publishing_interval": "100ms"}]})
    caplog.set_level(logging.WARNING, "edge_agent.drivers.opcua")
    drv = create(cfg)
    for _ in range(2):                     # and again after a reconnect: still one warning
        await drv.open()
        try:
            t_end = time.monotonic() + 3.5
            while time.monotonic() < t_end:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drv.read(), 0.5)
        finally:
            await drv.close()
    quiet = [r for r in caplog.records
             if r.getMessage() == "opcua waveform node sends almost no notifications"]
    assert [r.sensor_id for r in quiet] == ["still"]  # type: ignore[attr-defined]
    assert "sampling_interval 0" in quiet[0].hint  # type: ignore[attr-defined]
    assert drv.health().snapshot()["quiet_waveforms"] == ["still"]
