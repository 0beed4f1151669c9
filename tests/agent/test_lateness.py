"""A polled driver slower than its interval says it is late (metric + one log line per episode)
instead of silently thinning its schedule; back on schedule, it says so once too."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from edge_agent.agent import metrics
from edge_agent.agent.lateness import ON_TIME_TO_RECOVER, PollSchedule
from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import DriverHealth, DriverOutput
from edge_agent.records import Reading

INTERVAL = 0.05


class SlowDriver:
    """Each read takes ``read_s`` (120 ms: 2.4 intervals) until made fast."""

    streaming = False

    def __init__(self, read_s: float) -> None:
        self.name = "slow"
        self.read_s = read_s
        self.reads = 0
        self._h = DriverHealth("slow", "fake")

    async def open(self) -> None:
        pass

    async def read(self) -> DriverOutput:
        await asyncio.sleep(self.read_s)
        self.reads += 1
        self._h.ok(1)
        return [Reading("s", "t", 1.0, "u", time.time())]

    async def close(self) -> None:
        pass

    def health(self) -> DriverHealth:
        return self._h


def _start(d: SlowDriver) -> asyncio.Task[None]:
    async def emit(out: DriverOutput) -> None:
        pass

    return asyncio.create_task(run_driver(d, emit, poll_interval=INTERVAL, backoff=Backoff()))


def _lines(caplog: pytest.LogCaptureFixture, msg: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == msg]


async def test_a_driver_slower_than_its_interval_reports_late_polls(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.agent.lateness")
    d = SlowDriver(read_s=0.12)
    task = _start(d)
    try:
        await asyncio.sleep(1.0)
        snap = d.health().snapshot()
        late = _lines(caplog, "driver is late: polls skipped")
        back = _lines(caplog, "driver back on schedule")
        # the source becomes fast again: one "back on schedule" line ends the episode
        d.read_s = 0.001
        await asyncio.sleep((ON_TIME_TO_RECOVER + 5) * INTERVAL + 0.3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    slots = 1.0 / INTERVAL
    # ~8 polls happened in ~20 slots: every slot that passed without a poll is counted
    reads, missed = int(snap["reads"]), int(snap["late_polls"])  # type: ignore[call-overload]
    assert reads + missed >= 0.8 * slots, snap
    assert missed >= reads
    assert 0 < snap["poll_lag_s"] < 0.12  # type: ignore[operator]
    assert len(late) == 1, "one log line per late episode, not one per poll"
    assert late[0].driver == "slow"  # type: ignore[attr-defined]
    assert late[0].poll_interval_s == INTERVAL  # type: ignore[attr-defined]
    assert not back

    text = metrics.render(metrics.registry(lambda: {"drivers": [snap]})).decode()
    assert f'edge_agent_driver_late_polls_total{{driver="slow"}} {float(missed)}' in text
    assert 'edge_agent_driver_poll_lag_seconds{driver="slow"}' in text

    back = _lines(caplog, "driver back on schedule")
    assert len(back) >= 1 and back[0].missed_polls >= missed  # type: ignore[attr-defined]
    assert d.health().snapshot()["poll_lag_s"] == 0.0


def test_schedule_counts_each_missed_slot_and_keeps_its_phase() -> None:
    h = DriverHealth("d", "fake")
    s = PollSchedule("d", h, 1.0, start=100.0)
    assert s.after_poll(100.2) == pytest.approx(0.8)        # on time
    assert s.after_poll(103.5) == pytest.approx(0.5)        # slots 102 and 103 passed
    assert h.detail["late_polls"] == 2 and h.detail["poll_lag_s"] == pytest.approx(1.5)
    assert s.after_poll(104.1) == pytest.approx(0.9)        # phase kept: next at 105
    assert h.detail["poll_lag_s"] == 0.0 and h.errors["overrun"] == 1
    s2 = PollSchedule("d", h, 1.0, start=0.0)               # a reconnect keeps the total
    assert s2.late_polls == 2
