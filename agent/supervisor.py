"""Driver supervision: schedules, reconnects and backoff live here, never in a driver.

:func:`run_driver` keeps one driver alive forever: open a fresh connection, read (paced by the
poll interval for polled drivers), and on any driver failure close it, wait an exponentially
growing, jittered delay (:class:`edge_agent.backoff.Backoff`) and open again. It never gives
up: a plant outage may last hours.

A connection counts as *up* only once it has delivered: the first read after ``open()`` that
the driver counted as a good read (``health().reads`` grew). A TCP connect alone is not
success — a peer that accepts and never answers must back off like any other failure — so the
backoff is reset, ``health().connected`` set and "driver connected" logged only then.
"driver failed; reconnecting" is logged at warning level when an up connection fails (or the
first try fails); further failed attempts while still down are logged at debug level, so a long
outage does not flood the journal and the agent's connected/disconnected events follow real
state changes only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge_agent.agent.lateness import PollSchedule
from edge_agent.backoff import Backoff, Retrier
from edge_agent.drivers.base import Driver, DriverError, DriverHealth, DriverOutput

__all__ = ["RECOVERABLE", "Backoff", "run_driver"]

log = logging.getLogger(__name__)

# What a driver may raise that means "this connection is unusable, reconnect". Anything else is
# a bug and propagates to the pipeline's task group handler, which restarts the driver task.
RECOVERABLE: tuple[type[BaseException], ...] = (DriverError, OSError, TimeoutError, EOFError,
                                                ConnectionError)

Emit = Callable[[DriverOutput], Awaitable[None]]


async def _close_quietly(driver: Driver, limit_s: float = 5.0) -> None:
    try:
        async with asyncio.timeout(limit_s):
            await driver.close()
    except Exception as exc:  # noqa: BLE001 - closing must never raise: a failing close() would
        # otherwise replace the reason we are closing (a reconnect, or a cancellation).
        log.warning("driver close failed", extra={"driver": driver.name, "error": repr(exc)})


@dataclass
class _Link:
    """Up/down state of one supervised driver; logs and flags only real changes."""

    driver: Driver
    health: DriverHealth
    retrier: Retrier
    up: bool = False
    failed_once: bool = False
    down_since: float = 0.0

    def delivered(self) -> None:
        """The connection just delivered a good read: it is up."""
        self.health.connected = True
        if self.up:
            return
        self.up = True
        extra: dict[str, object] = {"driver": self.driver.name,
                                    "attempts": self.retrier.failures + 1}
        if self.failed_once:
            extra["down_s"] = round(time.monotonic() - self.down_since, 3)
        log.info("driver connected", extra=extra)
        self.retrier.reset()
        self.health.detail["reconnect_attempts"] = 0

    def failed(self, exc: BaseException) -> float:
        """Count one failed attempt; return the delay before the next one."""
        self.health.connected = False
        self.health.error(type(exc).__name__)
        delay = self.retrier.next_delay()
        first = self.up or not self.failed_once
        if first:
            self.down_since = time.monotonic()
        self.up, self.failed_once = False, True
        self.health.detail["reconnect_attempts"] = self.retrier.failures
        log.log(logging.WARNING if first else logging.DEBUG, "driver failed; reconnecting",
                extra={"driver": self.driver.name, "error": str(exc) or repr(exc),
                       "attempt": self.retrier.failures, "retry_in_s": round(delay, 3)})
        return delay


async def run_driver(driver: Driver, emit: Emit, *, poll_interval: float | None,
                     backoff: Backoff, open_timeout: float = 30.0,
                     rng: random.Random | None = None) -> None:
    """Run ``driver`` forever: open, read, emit; reconnect with backoff on failure.

    ``emit`` is awaited for every non-empty read, so a full downstream queue slows the driver
    (or drops by the queue's policy) instead of growing memory. Cancellation closes the driver.
    """
    health = driver.health()
    link = _Link(driver, health, backoff.retrier(rng))
    try:
        while True:
            try:
                async with asyncio.timeout(open_timeout):
                    await driver.open()
                # Connected is what the supervisor says: up after the first good read.
                health.connected = link.up = False
                await _read_loop(driver, emit, poll_interval, link)
            except RECOVERABLE as exc:
                delay = link.failed(exc)
                await _close_quietly(driver)
                await asyncio.sleep(delay)
    finally:
        health.connected = False
        await asyncio.shield(_close_quietly(driver))


async def _read_once(driver: Driver, emit: Emit, link: _Link) -> None:
    before = link.health.reads
    out = await driver.read()
    if link.health.reads > before:
        link.delivered()
    if out:
        await emit(out)


async def _read_loop(driver: Driver, emit: Emit, poll_interval: float | None,
                     link: _Link) -> None:
    if driver.streaming or not poll_interval:
        while True:
            await _read_once(driver, emit, link)
    # Polled: fixed-rate schedule on the monotonic clock; a slow poll skips missed slots
    # instead of bursting to catch up, and says so (agent/lateness.py).
    schedule = PollSchedule(driver.name, driver.health(), poll_interval)
    while True:
        await _read_once(driver, emit, link)
        await asyncio.sleep(schedule.after_poll())
