"""Supervisor: reconnects forever with growing jittered backoff; polled drivers keep their rate."""

from __future__ import annotations

import asyncio
import random
import time

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import DriverDisconnected, DriverHealth, DriverOutput
from edge_agent.records import Reading, expand


class FlakyDriver:
    """Fails to open ``fail_opens`` times, then reads ``reads_before_drop`` values and drops."""

    streaming = False

    def __init__(self, fail_opens: int, reads_before_drop: int) -> None:
        self.name = "flaky"
        self.fail_opens = fail_opens
        self.reads_before_drop = reads_before_drop
        self.opens = 0
        self.closes = 0
        self.read_times: list[float] = []
        self._reads = 0
        self._h = DriverHealth("flaky", "fake")

    async def open(self) -> None:
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise ConnectionRefusedError("refused")
        self._reads = 0

    async def read(self) -> DriverOutput:
        self._reads += 1
        if self._reads > self.reads_before_drop:
            raise DriverDisconnected("peer went away")
        self.read_times.append(time.monotonic())
        return [Reading("s", "t", float(self._reads), "u", time.time())]

    async def close(self) -> None:
        self.closes += 1

    def health(self) -> DriverHealth:
        return self._h


def test_backoff_grows_to_cap_with_jitter() -> None:
    b = Backoff(initial=0.1, maximum=2.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(1)
    delays = [b.delay(i, rng) for i in range(12)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert delays[-1] >= 1.0  # capped, never beyond maximum
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jitter spreads retries
    assert Backoff(1, 30, 2, 0).delay(100) == 30  # no overflow after a very long outage


async def test_reconnects_after_failed_opens_and_drops() -> None:
    d = FlakyDriver(fail_opens=5, reads_before_drop=3)
    got: list[float] = []

    async def emit(out: DriverOutput) -> None:
        got.extend(r.value for r in expand(out) if isinstance(r, Reading) and r.value is not None)

    task = asyncio.create_task(run_driver(d, emit, poll_interval=0.01,
                                          backoff=Backoff(0.001, 0.01, 2.0, 0.5)))
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert d.opens >= 8  # 5 refusals, then several cycles of 3 reads + drop
    assert got[:6] == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    assert d.health().errors["ConnectionRefusedError"] == 5
    assert d.health().errors["DriverDisconnected"] >= 2
    assert d.closes >= d.opens - 1  # every failed connection was closed
    assert not d.health().connected


async def test_polled_driver_keeps_its_interval() -> None:
    d = FlakyDriver(fail_opens=0, reads_before_drop=10**9)

    async def emit(out: DriverOutput) -> None:
        return None

    task = asyncio.create_task(run_driver(d, emit, poll_interval=0.05, backoff=Backoff()))
    await asyncio.sleep(0.53)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    gaps = [b - a for a, b in zip(d.read_times, d.read_times[1:], strict=False)]
    assert 9 <= len(d.read_times) <= 12
    assert abs(sum(gaps) / len(gaps) - 0.05) < 0.01
