"""The fixed-rate schedule of a polled driver, which says when it is late.

A poll that overruns its slot (the source is slow, or the CPU is saturated) does not make the
driver burst to catch up: the missed slots are skipped. They are not skipped silently — each is
counted in the driver's health (``late_polls``, ``poll_lag_s`` → the metrics
``edge_agent_driver_late_polls_total`` and ``edge_agent_driver_poll_lag_seconds``), and a late
*episode* is logged once when it starts and once when the driver is back on schedule.
"""

from __future__ import annotations

import logging
import time

from edge_agent.drivers.base import DriverHealth

log = logging.getLogger(__name__)

ON_TIME_TO_RECOVER = 10   # consecutive on-time polls that end a late episode


class PollSchedule:
    def __init__(self, driver: str, health: DriverHealth, interval: float,
                 start: float | None = None) -> None:
        self.driver, self.health, self.interval = driver, health, interval
        self.next_t = time.monotonic() if start is None else start
        kept = health.detail.get("late_polls")  # a reconnect keeps the driver's total
        self.late_polls: int = kept if isinstance(kept, int) else 0
        self.episode_missed = 0
        self.episode_start = 0.0
        self.on_time = 0
        health.detail.update(late_polls=self.late_polls, poll_lag_s=0.0)

    @property
    def late(self) -> bool:
        return self.episode_missed > 0

    def after_poll(self, now: float | None = None) -> float:
        """Account for the poll that just finished; return how long to sleep until the next."""
        now = time.monotonic() if now is None else now
        self.next_t += self.interval
        lag = now - self.next_t
        if lag > 0:
            missed = int(lag // self.interval) + 1
            self.next_t += missed * self.interval
            self._late(missed, lag, now)
        elif self.late:
            self.on_time += 1
            if self.on_time >= ON_TIME_TO_RECOVER:
                log.info("driver back on schedule",
                         extra={"driver": self.driver, "missed_polls": self.episode_missed,
                                "late_for_s": round(now - self.episode_start, 3)})
                self.episode_missed = 0
        self.health.detail["poll_lag_s"] = round(max(0.0, lag), 6)
        return self.next_t - now

    def _late(self, missed: int, lag: float, now: float) -> None:
        self.health.error("overrun")
        self.late_polls += missed
        self.health.detail["late_polls"] = self.late_polls
        self.on_time = 0
        if not self.late:
            self.episode_start = now
            log.warning("driver is late: polls skipped",
                        extra={"driver": self.driver, "poll_interval_s": self.interval,
                               "lag_s": round(lag, 3), "missed_polls": missed})
        self.episode_missed += missed
