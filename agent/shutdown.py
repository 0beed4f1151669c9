"""A stop that always stops: one deadline for the whole shutdown, and cancellation that sticks.

A single ``Task.cancel()`` is not enough to stop a busy driver: on Python 3.11,
``asyncio.wait_for`` (which pymodbus and asyncua use around every request) swallows the
cancellation when the awaited answer lands in the same loop iteration, and the driver goes on
polling. :func:`cancel_until_done` therefore cancels again until the tasks have finished, within
a bound. :class:`Deadline` shares ``agent.shutdown_timeout`` among the shutdown's stages
(stopping drivers, committing what was read, the last sync), so SIGTERM → exit stays within it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

RECANCEL_S = 0.05   # how often a task that survived its cancellation is cancelled again


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, floor: float = 0.0) -> float:
        """Seconds left (at least ``floor``: a stage that must run gets that much)."""
        return max(floor, self.end - time.monotonic())


async def cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished, whatever it raised."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def cancel_until_done(tasks: Iterable[asyncio.Task[object]], within: float) -> bool:
    """Cancel ``tasks`` (again and again, until each has finished) for at most ``within``
    seconds; True if all finished. Their results and exceptions are left on the tasks."""
    pending = {t for t in tasks if not t.done()}
    end = time.monotonic() + within
    while pending:
        left = end - time.monotonic()
        if left <= 0:
            return False
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))
    return True
