"""The running agent: drivers → queues → (buffer writer | analysis) → buffer → uploader.

All stages run as tasks of one :class:`asyncio.TaskGroup`. Drivers are supervised (reconnect
with backoff, restart after an unexpected crash) and never see anything but their ``emit``
callback. Readings and analysis results reach the buffer through :meth:`Buffer.put`, which
returns only once they are committed — that commit is the acknowledgement.

Shutdown (:meth:`Pipeline.run` returns after ``stop`` is set): drivers are cancelled and closed,
the queues are closed and drained into the buffer, then the uploader gets one last sync attempt
bounded by ``agent.shutdown_timeout`` and the buffer is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from edge_agent.agent.admission import ReadingGate
from edge_agent.agent.analysis import Analysis
from edge_agent.agent.config import AgentConfig
from edge_agent.agent.queues import BoundedQueue
from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import Driver, DriverOutput
from edge_agent.records import Event, FeatureVector, Reading, WaveformBlock
from edge_agent.sync.buffer import Buffer
from edge_agent.sync.uploader import Uploader

log = logging.getLogger("edge_agent.pipeline")

READ_BATCH = 5000


class Pipeline:
    def __init__(self, cfg: AgentConfig, drivers: Sequence[Driver], buffer: Buffer,
                 uploader: Uploader | None) -> None:
        self.cfg = cfg
        self.drivers = list(drivers)
        self.buffer = buffer
        self.uploader = uploader
        q = cfg.queues
        self.readings: BoundedQueue[Reading] = BoundedQueue(
            "readings", q.readings.size, q.readings.overflow)
        self.waveforms: BoundedQueue[WaveformBlock] = BoundedQueue(
            "waveforms", q.waveforms.size, q.waveforms.overflow)
        self.analyses = {p.source: Analysis(p, cfg.state_dir) for p in cfg.pipelines}
        self.shaft_tags = {p.source: getattr(p.features, "shaft_speed_tag", None)
                           for p in cfg.pipelines}
        self.gate = ReadingGate()
        self.latest = self.gate.latest  # last good value per sensor (shaft speed tags)
        self.refused_records = 0
        self._fitting: dict[str, asyncio.Task[None]] = {}
        self.analysis_errors: dict[str, int] = {}
        self.unrouted_blocks = 0
        self.driver_restarts: dict[str, int] = {d.name: 0 for d in self.drivers}
        self.uploader_restarts: dict[str, int] = {}
        self.started = time.time()
        r = cfg.reconnect
        self.backoff = Backoff(r.initial, r.maximum, r.multiplier, r.jitter)

    # -- stages -----------------------------------------------------------------------------
    async def emit(self, out: DriverOutput) -> None:
        for rec in out:
            if isinstance(rec, WaveformBlock):
                await self.waveforms.put(rec)
            else:
                await self.readings.put(rec)

    async def _driver_task(self, driver: Driver) -> None:
        poll = getattr(getattr(driver, "cfg", None), "poll_interval", None)
        await self._supervise(
            lambda: run_driver(driver, self.emit, poll_interval=poll, backoff=self.backoff),
            "driver_crashed", driver.name, self.driver_restarts)

    async def _supervise(self, run: Callable[[], Awaitable[None]], kind: str, source: str,
                         restarts: dict[str, int]) -> None:
        """Run a long-lived stage (a driver, the uploader); if it crashes on a bug, log it with
        its traceback, record a ``kind`` event, back off and run it again — the other stages
        keep running. Returns when ``run`` returns."""
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervisor boundary: one stage's bug must not take the
                # others down.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # shutting down: whatever close() raised must not restart it
                n = restarts.get(source, 0)
                delay = self.backoff.delay(n)
                restarts[source] = n + 1
                log.exception(f"{kind.replace('_', ' ')}; restarting",
                              extra={"source": source, "retry_in_s": round(delay, 3),
                                     "restarts": n + 1})
                await self._put([Event(kind, source, time.time(), "warning",
                                       {"error": f"{type(exc).__name__}: {exc}",
                                        "restarts": n + 1})])
                await asyncio.sleep(delay)

    async def _reading_writer(self) -> None:
        while True:
            batch = await self.readings.get_batch(READ_BATCH)
            if not batch:
                return  # closed and drained
            clean, events = self.gate.admit(batch, time.time())
            await self._put([*events, *clean])

    async def _put(self, records: list[Any]) -> None:
        """Commit ``records``; if the buffer refuses the group, commit them one by one so a
        malformed record costs itself only (counted and logged), never its neighbours."""
        if not records:
            return
        try:
            await self.buffer.put(records)
        except ValueError:
            for r in records:
                try:
                    await self.buffer.put([r])
                except ValueError as exc:
                    self.refused_records += 1
                    log.error("record refused by the buffer", extra={"error": str(exc)})

    async def _analysis_task(self) -> None:
        while True:
            blocks = await self.waveforms.get_batch(64)
            if not blocks:
                return
            out: list[FeatureVector | Event] = []
            for block in blocks:
                an = self.analyses.get(block.source_id)
                if an is None:
                    self.unrouted_blocks += 1
                    continue
                tag = self.shaft_tags.get(block.source_id)
                rpm = self.latest.get(tag) if tag else None
                try:
                    vectors, events = an.process(block, rpm)
                except Exception as exc:  # noqa: BLE001 - stage boundary: a bug in one
                    # source must not stop acquisition or the other sources; it is logged with
                    # its traceback, counted and recorded as an event (rate-limited by kind).
                    vectors, events = [], self._analysis_failed(an, block, exc)
                out.extend(vectors)
                out.extend(events)
                if an.baseline_ready and block.source_id not in self._fitting:
                    self._fitting[block.source_id] = asyncio.create_task(
                        self._commission(an, block.end), name=f"baseline:{block.source_id}")
            await self._put(out)
            await asyncio.sleep(0)  # let drivers and the writer run between batches

    def _analysis_failed(self, an: Analysis, block: WaveformBlock,
                         exc: Exception) -> list[Event]:
        n = self.analysis_errors.get(an.source, 0) + 1
        self.analysis_errors[an.source] = n
        if n & (n - 1):  # log and record the 1st, 2nd, 4th, 8th ... failure, not every block
            return []
        log.exception("analysis failed", extra={"source": an.source, "failures": n})
        return [Event("analysis_failed", an.source, block.end, "warning",
                      {"error": f"{type(exc).__name__}: {exc}", "failures": n})]

    async def _commission(self, an: Analysis, ts: float) -> None:
        """Fit a baseline off the event loop (sklearn), then load it and record the events."""
        log.info("commissioning: fitting baseline", extra={"source": an.source})
        try:
            result = await asyncio.to_thread(an.fit_baseline)
            events = an.baseline_done(result, ts)
        except Exception as exc:  # stage boundary: a failed fit must leave the
            # pipeline running unscored and say why, not surface at shutdown.
            log.exception("commissioning failed", extra={"source": an.source})
            events = [Event("baseline_failed", an.source, ts, "warning",
                            {"error": f"{type(exc).__name__}: {exc}"})]
        await self._put(events)

    async def _health_task(self) -> None:
        was: dict[str, bool] = {}
        next_log = time.monotonic() + 60.0
        while True:
            await asyncio.sleep(self.cfg.agent.health_interval)
            events = []
            for d in self.drivers:
                h = d.health()
                if was.get(d.name) != h.connected and d.name in was:
                    kind = "driver_connected" if h.connected else "driver_disconnected"
                    events.append(Event(kind, d.name, time.time(),
                                        "info" if h.connected else "warning",
                                        {"errors": dict(h.errors)}))
                was[d.name] = h.connected
            await self._put(events)
            if time.monotonic() >= next_log:
                next_log += 60.0
                log.info("heartbeat", extra={"stats": self.heartbeat()})

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.buffer.put([Event("agent_started", self.cfg.agent.gateway_id, time.time(),
                                     "info", {"drivers": [d.name for d in self.drivers]})])
        async with asyncio.TaskGroup() as tg:
            driver_tasks = [tg.create_task(self._driver_task(d), name=f"driver:{d.name}")
                            for d in self.drivers]
            writer = tg.create_task(self._reading_writer(), name="writer")
            analysis = tg.create_task(self._analysis_task(), name="analysis")
            background = [tg.create_task(self._health_task(), name="health")]
            if self.uploader is not None:
                up = self.uploader
                background.append(tg.create_task(
                    self._supervise(up.run, "uploader_crashed", self.cfg.agent.gateway_id,
                                    self.uploader_restarts), name="uploader"))
            await stop.wait()
            log.info("stopping: closing drivers and draining queues")
            for t in driver_tasks:
                t.cancel()
            await asyncio.gather(*driver_tasks, return_exceptions=True)
            self.readings.close()
            self.waveforms.close()
            # One deadline for the whole shutdown (drain, last event, last sync): a full or
            # failing disk must not stretch it. The rest of shutdown_timeout (>= 1 s, or half
            # of it) is left for closing the buffer and the process's own exit (~0.5 s).
            limit = float(self.cfg.agent.shutdown_timeout)
            deadline = asyncio.get_running_loop().time() + max(0.5 * limit,
                                                               limit - max(1.0, 0.1 * limit))
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.gather(writer, analysis, *self._fitting.values(),
                                         return_exceptions=True)
            except TimeoutError:
                # The buffer cannot commit (a failing disk): stop waiting; what was not
                # committed was never acknowledged, and drivers re-read live values.
                log.error("could not commit everything before shutdown_timeout",
                          extra={"pending_readings": len(self.readings)})
                for t in (writer, analysis, *self._fitting.values()):
                    t.cancel()
            for t in background:
                t.cancel()
        try:
            async with asyncio.timeout_at(deadline):
                await self._put([Event("agent_stopped", self.cfg.agent.gateway_id, time.time(),
                                       "info", {"uptime_s": round(time.time() - self.started)})])
        except TimeoutError:
            log.error("could not record agent_stopped before shutdown_timeout")
        if self.uploader is not None:
            try:
                left = deadline - asyncio.get_running_loop().time()
                await self.uploader.flush(max(0.0, left))
            except TimeoutError:
                log.warning("final sync attempt timed out; data stays buffered")

    def stats(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "queues": {"readings": self.readings.stats(), "waveforms": self.waveforms.stats()},
            "unrouted_blocks": self.unrouted_blocks,
            "driver_restarts": dict(self.driver_restarts),
            "uploader_restarts": sum(self.uploader_restarts.values()),
            "analysis_errors": dict(self.analysis_errors),
            "readings_dropped": self.gate.stats(),
            "records_refused": self.refused_records,
        }

    def heartbeat(self) -> dict[str, Any]:
        return {**self.stats(), "pipelines": self.analysis_stats(),
                "drivers": self.drivers_health()}

    def analysis_stats(self) -> list[dict[str, object]]:
        """One entry per pipeline, keyed by ``source`` (a metrics label, not a metric name)."""
        return [{"source": s, **a.stats()} for s, a in self.analyses.items()]

    def drivers_health(self) -> list[dict[str, object]]:
        return [d.health().snapshot() for d in self.drivers]

