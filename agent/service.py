"""The daemon's side of systemd's ``Type=notify`` protocol (:mod:`edge_agent.agent.notify`).

* ``READY=1`` once the configuration is loaded, the buffer open and the drivers started
  (:attr:`Pipeline.running`); a driver still connecting to its PLC does not delay it.
* ``STATUS=`` a one-line live summary (drivers connected, active alarms, backlog), refreshed
  every ``every`` seconds and with each watchdog ping.
* ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``, only while :meth:`StatusService.health` — the
  very verdict ``/healthz`` serves (:class:`edge_agent.agent.health.Progress`) — says the
  pipeline makes progress, so systemd kills and restarts a stalled agent.
* ``RELOADING=1`` / ``READY=1`` around a SIGHUP reload, ``STOPPING=1`` at shutdown.

Without ``$NOTIFY_SOCKET`` (not started by systemd) every message is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.agent.notify import Notifier, Watchdog, watchdog_interval
from edge_agent.agent.status import StatusService

__all__ = ["Service", "summary"]
log = logging.getLogger(__name__)


def summary(pipeline: Any) -> str:
    """``drivers 2/2 connected, 1 alarm, backlog 1234 rows`` (at most 200 characters)."""
    drivers = list(pipeline.drivers)
    up = sum(1 for d in drivers if d.health().connected)
    alarms = sum(1 for an in pipeline.analyses.values() if an.stats().get("alarm"))
    backlog = pipeline.buffer.stats().get("rows_queued_total", 0)
    return (f"drivers {up}/{len(drivers)} connected, {alarms} alarm{'s' * (alarms != 1)}, "
            f"backlog {backlog} rows")[:200]


class Service:
    def __init__(self, pipeline: Any, status: StatusService,
                 notifier: Notifier | None = None, every: float = 5.0) -> None:
        self.pipeline = pipeline
        self.status = status
        self.notifier = notifier or Notifier()
        self.every = every
        interval = watchdog_interval()
        self.watchdog = None if interval is None else Watchdog(
            self.notifier, self._progress, interval, self.summary)

    def summary(self) -> str:
        return summary(self.pipeline)

    def _progress(self) -> tuple[bool, str]:
        verdict = self.status.health()
        return verdict.ok, "; ".join(verdict.reasons)

    async def run(self) -> None:
        """READY=1 once the pipeline runs, then STATUS= and the watchdog until cancelled."""
        await self.pipeline.running.wait()
        self.notifier.ready(self.summary())
        log.info("ready", extra={"status": self.summary(), "notify": self.notifier.enabled,
                                 "watchdog_s": self.watchdog.interval if self.watchdog else None})
        if not self.notifier.enabled:
            return
        async with asyncio.TaskGroup() as tg:
            if self.watchdog is not None:
                tg.create_task(self.watchdog.run(), name="watchdog")
            while True:
                await asyncio.sleep(self.every)
                self.notifier.status(self.summary())

    async def reloading(self, reload: Callable[[], Awaitable[bool]]) -> bool:
        """``RELOADING=1`` (with ``MONOTONIC_USEC``), the reload, then ``READY=1`` — also when
        the new configuration was refused (the agent goes on with the running one)."""
        self.notifier.reloading(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        try:
            return await reload()
        finally:
            self.notifier.ready(self.summary())

    def stopping(self) -> None:
        self.notifier.stopping()
        self.notifier.send(status="stopping: draining to the buffer, final sync")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.notifier.close()
