"""Node ids written with their namespace URI (``nsu=<uri>;s=…``) resolve through the server's
namespace array on every connect; a node the server chokes on costs that node only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import DriverOutput
from edge_agent.drivers.opcua import Config, create
from edge_agent.records import Reading, expand
from edge_agent.settings import parse as build
from tests.conftest import free_port
from tests.drivers.opcua_server import NS, PlantServer

pytestmark = pytest.mark.timeout(60)

FAST = {"publishing_interval": "100ms"}


@pytest.fixture
async def plant(ua_shelf: Path) -> AsyncIterator[PlantServer]:
    srv = PlantServer(free_port(), shelf=ua_shelf)
    srv.extra_namespaces = 2          # NS sits at index 4, not at the usual 2
    await srv.start()
    yield srv
    await srv.stop()


def config(url: str, nodes: list[dict[str, Any]], **extra: Any) -> Config:
    return build(Config, {"kind": "opcua", "name": "ua", "endpoint": url, "nodes": nodes,
                          "timeout": "1s", "connection_check": "5s", **extra})


async def wait_values(got: list[Reading], sensors: set[str], since: float,
                      bound: float) -> None:
    t_end = time.monotonic() + bound
    while not sensors <= {r.sensor_id for r in got if r.value is not None
                          and r.timestamp >= since}:
        assert time.monotonic() < t_end, f"no values of {sensors} within {bound}s"
        await asyncio.sleep(0.05)


async def test_nsu_node_ids_resolve_and_follow_a_restart(plant: PlantServer) -> None:
    assert plant.ns_index == 4
    nodes: list[dict[str, Any]] = [{"sensor_id": "temp", "node_id": f"nsu={NS};s=Temp", **FAST},
             {"sensor_id": "speed", "node_id": f"nsu={NS};s=Speed", "mode": "polling",
              "poll_interval": "100ms"},
             {"sensor_id": "vib", "node_id": f"nsu={NS};s=Vib", "waveform": True,
              "sample_rate_node": f"nsu={NS};s=Vib.Rate", **FAST},
             {"sensor_id": "alien", "node_id": "nsu=urn:nobody:here;s=Temp", **FAST}]
    drv = create(config(plant.url, nodes))
    got: list[Reading] = []
    blocks: list[object] = []

    async def emit(out: DriverOutput) -> None:
        got.extend(r for r in expand(out) if isinstance(r, Reading))
        blocks.extend(b for b in out if not isinstance(b, Reading))

    task = asyncio.create_task(run_driver(drv, emit, poll_interval=None,
                                          backoff=Backoff(initial=0.05, maximum=0.5)))
    try:
        await wait_values(got, {"temp", "speed"}, 0.0, 10)
        assert blocks, "the array node (and its nsu= sample-rate node) resolved too"
        bad = drv.health().bad_points
        assert "namespace 'urn:nobody:here' is not in the server's namespace array" in \
            bad["alien"]
        assert set(bad) == {"alien"}
        # The PLC restarts with a different namespace array: NS moves from 4 to 2.
        await plant.stop()
        plant.extra_namespaces = 0
        await plant.start()
        assert plant.ns_index == 2
        t_restart = time.time()
        got.clear()
        await wait_values(got, {"temp", "speed"}, t_restart, 10)
        assert set(drv.health().bad_points) == {"alien"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("delay", [0.0, 1.3])
async def test_a_node_the_server_chokes_on_costs_that_node_only(
        plant: PlantServer, delay: float, caplog: pytest.LogCaptureFixture) -> None:
    """The server answers a CreateMonitoredItems request naming "Flaky" with a fault (at once,
    or after longer than the request timeout): every other node is still monitored."""
    plant.refuse, plant.refuse_delay = {"Flaky"}, delay
    nodes: list[dict[str, Any]] = [{"sensor_id": "temp", "node_id": f"nsu={NS};s=Temp", **FAST},
             {"sensor_id": "flaky", "node_id": f"nsu={NS};s=Flaky", **FAST},
             {"sensor_id": "unc", "node_id": f"nsu={NS};s=Unc", **FAST}]
    drv = create(config(plant.url, nodes))
    caplog.set_level(logging.WARNING, "edge_agent.drivers.opcua")
    t0 = time.monotonic()
    await drv.open()
    try:
        assert time.monotonic() - t0 < 6
        got: list[Reading] = []
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            got.extend(r for r in expand(await asyncio.wait_for(drv.read(), 2))
                       if isinstance(r, Reading))
        good = {r.sensor_id for r in got if r.value is not None}
        assert good == {"temp", "unc"}
        reason = drv.health().bad_points["flaky"]
        assert reason.startswith("cannot monitor:"), reason
        assert ("BadDecodingError" if delay == 0 else "no answer") in reason, reason
        named = [r for r in caplog.records if r.getMessage() == "opcua node cannot be monitored"]
        assert [r.sensor_id for r in named] == ["flaky"]  # type: ignore[attr-defined]
    finally:
        await drv.close()


async def test_a_polled_node_the_server_refuses_costs_that_node_only(
        plant: PlantServer) -> None:
    """The server answers a Read naming "Flaky" with a ServiceFault for the whole request."""
    plant.refuse = {"Flaky"}
    polled = {"mode": "polling", "poll_interval": "100ms"}
    nodes = [{"sensor_id": "temp", "node_id": f"nsu={NS};s=Temp", **polled},
             {"sensor_id": "flaky", "node_id": f"nsu={NS};s=Flaky", **polled},
             {"sensor_id": "speed", "node_id": f"nsu={NS};s=Speed", **polled}]
    drv = create(config(plant.url, nodes))
    await drv.open()
    try:
        got: list[Reading] = []
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            got.extend(r for r in expand(await asyncio.wait_for(drv.read(), 2))
                       if isinstance(r, Reading))
        assert {r.sensor_id for r in got if r.value is not None} == {"temp", "speed"}
        assert sum(r.sensor_id == "temp" for r in got) >= 5
        reason = drv.health().bad_points["flaky"]
        assert reason == "cannot read: refused by the server (BadDecodingError)", reason
        assert drv.health().connected
    finally:
        await drv.close()
