"""Driver supervision: schedules, reconnects and backoff live here, never in a driver.

:func:`run_driver` keeps one driver alive forever: open a fresh connection, read (paced by the
poll interval for polled drivers), and on any driver failure close it, wait an exponentially
growing, jittered delay and open again. It never gives up: a plant outage may last hours.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge_agent.drivers.base import Driver, DriverError, DriverOutput

log = logging.getLogger(__name__)

# What a driver may raise that means "this connection is unusable, reconnect". Anything else is
# a bug and propagates to the pipeline's task group handler, which restarts the driver task.
RECOVERABLE: tuple[type[BaseException], ...] = (DriverError, OSError, TimeoutError, EOFError,
                                                ConnectionError)


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of the delay drawn at random (0 = none, 1 = full jitter)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before reconnect attempt ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        r = (rng or random).random()
        return base * (1.0 - self.jitter * r)


Emit = Callable[[DriverOutput], Awaitable[None]]


async def _close_quietly(driver: Driver, limit_s: float = 5.0) -> None:
    try:
        async with asyncio.timeout(limit_s):
            await driver.close()
    except Exception as exc:  # noqa: BLE001 - closing must never raise: a failing close() would
        # otherwise replace the reason we are closing (a reconnect, or a cancellation).
        log.warning("driver close failed", extra={"driver": driver.name, "error": repr(exc)})


async def run_driver(driver: Driver, emit: Emit, *, poll_interval: float | None,
                     backoff: Backoff, open_timeout: float = 30.0,
                     rng: random.Random | None = None) -> None:
    """Run ``driver`` forever: open, read, emit; reconnect with backoff on failure.

    ``emit`` is awaited for every non-empty read, so a full downstream queue slows the driver
    (or drops by the queue's policy) instead of growing memory. Cancellation closes the driver.
    """
    attempt = 0
    health = driver.health()
    try:
        while True:
            try:
                async with asyncio.timeout(open_timeout):
                    await driver.open()
                health.connected = True
                if attempt:
                    log.info("driver reconnected",
                             extra={"driver": driver.name, "attempts": attempt})
                attempt = 0
                await _read_loop(driver, emit, poll_interval)
            except RECOVERABLE as exc:
                health.connected = False
                health.error(type(exc).__name__)
                delay = backoff.delay(attempt, rng)
                attempt += 1
                log.warning("driver failed; reconnecting",
                            extra={"driver": driver.name, "error": str(exc) or repr(exc),
                                   "attempt": attempt, "retry_in_s": round(delay, 3)})
                await _close_quietly(driver)
                await asyncio.sleep(delay)
    finally:
        health.connected = False
        await asyncio.shield(_close_quietly(driver))


async def _read_loop(driver: Driver, emit: Emit, poll_interval: float | None) -> None:
    if driver.streaming or not poll_interval:
        while True:
            out = await driver.read()
            if out:
                await emit(out)
    # Polled: fixed-rate schedule on the monotonic clock; a slow poll skips missed slots
    # instead of bursting to catch up.
    next_t = time.monotonic()
    while True:
        out = await driver.read()
        if out:
            await emit(out)
        next_t += poll_interval
        now = time.monotonic()
        if next_t < now:
            skipped = int((now - next_t) // poll_interval) + 1
            driver.health().error("overrun")
            next_t += skipped * poll_interval
        await asyncio.sleep(next_t - now)
