"""The running agent: drivers → queues → (buffer writer | analysis) → buffer → uploader.

All stages run as tasks of one :class:`asyncio.TaskGroup`. Drivers are supervised (reconnect
with backoff, restart after an unexpected crash) and never see anything but their ``emit``
callback. Readings and analysis results reach the buffer through :meth:`Buffer.put`, which
returns only once they are committed — that commit is the acknowledgement.

Shutdown (:meth:`Pipeline.run` returns after ``stop`` is set): drivers are cancelled and closed,
the queues are closed and drained into the buffer, then the uploader gets one last sync attempt
and the buffer is closed — all of it within one ``agent.shutdown_timeout`` (``agent/shutdown.py``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from edge_agent import records as recs
from edge_agent.agent.admission import ReadingGate
from edge_agent.agent.analysis import Analysis
from edge_agent.agent.config import AgentConfig, PipelineConfig
from edge_agent.agent.history import StatusRecorder
from edge_agent.agent.queues import BoundedQueue
from edge_agent.agent.shutdown import Deadline, cancel_until_done, cancelled
from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import Driver, DriverOutput
from edge_agent.models.builtin import resolve_model
from edge_agent.records import Event, FeatureVector, Reading, ReadingBlock, WaveformBlock
from edge_agent.sync.buffer import Buffer

if TYPE_CHECKING:  # httpx (uploader, registry client): imported only when configured
    from edge_agent.models.registry.poller import RegistryPoller
    from edge_agent.sync.mqtt.publisher import MqttPublisher
    from edge_agent.sync.uploader import Uploader

log = logging.getLogger(__name__)

READ_BATCH = 5000
STOP_FLOOR_S = 0.2  # each shutdown stage gets at least this, even past shutdown_timeout
DRIVER_STOP_S = 10.0  # a driver stopped by a reload closes its connection within this


class Pipeline:
    def __init__(self, cfg: AgentConfig, drivers: Sequence[Driver], buffer: Buffer,
                 uploader: Uploader | None, mqtt: MqttPublisher | None = None) -> None:
        self.cfg = cfg
        self.drivers = list(drivers)
        self.buffer = buffer
        self.uploader = uploader
        self.mqtt = mqtt  # [mqtt]: a second sink of the buffer (the status page reads stats())
        q = cfg.queues
        self.readings: BoundedQueue[Reading | ReadingBlock] = BoundedQueue(
            "readings", q.readings.size, q.readings.overflow, recs.weight)  # in readings
        self.waveforms: BoundedQueue[WaveformBlock] = BoundedQueue(
            "waveforms", q.waveforms.size, q.waveforms.overflow)
        self.analyses = {p.source: Analysis(p, cfg.state_dir) for p in cfg.pipelines}
        self.shaft_tags = {p.source: getattr(p.features, "shaft_speed_tag", None)
                           for p in cfg.pipelines}
        self.gate = ReadingGate(buffer.last_timestamps)  # repeats across restarts too
        self.latest = self.gate.latest  # last good value per sensor (shaft speed tags)
        self.refused_records = 0
        self._fitting: dict[str, asyncio.Task[None]] = {}
        self.analysis_errors: dict[str, int] = {}
        self.unrouted_blocks = 0
        self.driver_restarts: dict[str, int] = {d.name: 0 for d in self.drivers}
        self.uploader_restarts: dict[str, int] = {}
        self.registry_restarts: dict[str, int] = {}
        self.started = time.time()
        self.recorder = StatusRecorder(cfg.web.history, cfg.web.resolution)  # the status page
        r = cfg.reconnect
        self.backoff = Backoff(r.initial, r.maximum, r.multiplier, r.jitter)
        # Live tasks by name, so a reload (agent/reload.py) can stop and start single stages.
        self.running = asyncio.Event()  # set once the drivers and stages are started
        self.lock = asyncio.Lock()  # a reload and the shutdown never interleave
        self.stopping = False
        self.stop_by: float | None = None  # loop time by which a stop must be done
        self._tg: asyncio.TaskGroup | None = None
        self._driver_tasks: dict[str, asyncio.Task[None]] = {}
        self._registry_tasks: dict[str, asyncio.Task[None]] = {}
        self._sink_tasks: dict[str, asyncio.Task[None]] = {}  # "uploader" (and other sinks)
        self.sink_restarts: dict[str, dict[str, int]] = {"uploader": self.uploader_restarts}

    # -- stages -----------------------------------------------------------------------------
    async def emit(self, out: DriverOutput, *, recorded: bool = False) -> None:
        """Queue a driver's output; a ``recorded`` source's waveforms wait for room."""
        readings: list[Reading | ReadingBlock] = []
        for rec in out:
            if isinstance(rec, WaveformBlock):
                await self.waveforms.put(rec, wait=recorded)
            else:
                readings.append(rec)
        if readings:
            await self.readings.put_many(readings)  # one call per driver read, not per reading

    async def _driver_task(self, driver: Driver) -> None:
        poll = getattr(getattr(driver, "cfg", None), "poll_interval", None)
        emit = functools.partial(self.emit, recorded=getattr(driver, "recorded", False))
        await self._supervise(
            lambda: run_driver(driver, emit, poll_interval=poll, backoff=self.backoff),
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
                log.exception("restarting after a crash",
                              extra={"kind": kind, "source": source,
                                     "retry_in_s": round(delay, 3), "restarts": n + 1})
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
                self.recorder.observe(block.source_id, vectors, events)
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
            self._tg = tg
            for d in self.drivers:
                self.start_driver(d)
            writer = tg.create_task(self._reading_writer(), name="writer")
            analysis = tg.create_task(self._analysis_task(), name="analysis")
            health = tg.create_task(self._health_task(), name="health")
            for p in self.registry_pollers():
                self.start_registry(p)
            self.start_uploader(self.uploader)
            if self.mqtt is not None:
                self.start_sink("mqtt", self.mqtt.run)
            self.running.set()
            # What exists now lives as long as the process: out of every later full collection
            # (a gen-2 pass over it took ~90 ms on a loaded gateway: the tick -> commit tail).
            gc.freeze()
            await stop.wait()
            self.stopping = True
            await self.lock.acquire()  # a reload in progress finishes first; none starts after
            log.info("stopping: closing drivers and draining queues")
            # One deadline for the whole shutdown (drivers, drain, last event, last sync): a
            # loaded CPU or a full disk must not stretch it. The rest of shutdown_timeout
            # (>= 1 s, or half of it) is left for closing the buffer and the process's exit.
            limit = float(self.cfg.agent.shutdown_timeout)
            self.stop_by = asyncio.get_running_loop().time() + limit  # see close_budget
            sync_s = max(0.5 * limit, limit - max(1.0, 0.1 * limit))
            deadline = Deadline(sync_s)
            drain_by = Deadline(sync_s - min(1.0, sync_s / 4))  # the rest: the last sync's
            driver_tasks = list(self._driver_tasks.values())
            if not await cancel_until_done(driver_tasks, drain_by.left(STOP_FLOOR_S)):
                log.error("drivers did not stop before shutdown_timeout")
            self.readings.close()
            self.waveforms.close()
            try:
                async with asyncio.timeout(drain_by.left(STOP_FLOOR_S)):
                    await asyncio.gather(writer, analysis, *self._fitting.values(),
                                         return_exceptions=True)
            except TimeoutError:
                # The buffer cannot commit (a failing disk): stop waiting; what was not
                # committed was never acknowledged, and drivers re-read live values.
                log.error("could not commit everything before shutdown_timeout",
                          extra={"pending_readings": len(self.readings)})
                await cancel_until_done((writer, analysis, *self._fitting.values()),
                                        STOP_FLOOR_S)
            background = [health, *self._registry_tasks.values(), *self._sink_tasks.values()]
            await cancel_until_done(background, STOP_FLOOR_S)
        self.lock.release()
        try:
            async with asyncio.timeout(deadline.left(STOP_FLOOR_S)):
                await self._put([Event("agent_stopped", self.cfg.agent.gateway_id, time.time(),
                                       "info", {"uptime_s": round(time.time() - self.started)})])
        except TimeoutError:
            log.error("could not record agent_stopped before shutdown_timeout")
        # The final sync (uploader and MQTT alike) shares the same deadline.
        left = deadline.left(STOP_FLOOR_S)
        await asyncio.gather(self._flush_uploader(left), self._flush_mqtt(left))

    def close_budget(self) -> float:
        """Seconds the buffer's close may take: what is left of shutdown_timeout (less
        ~0.5 s for the process's exit), at least 0.5 s; all of it before a stop began."""
        if self.stop_by is None:
            return float(self.cfg.agent.shutdown_timeout)
        return max(0.5, self.stop_by - 0.5 - asyncio.get_running_loop().time())

    async def _flush_uploader(self, left: float) -> None:
        if self.uploader is not None:
            try:
                await self.uploader.flush(left)
            except TimeoutError:
                log.warning("final sync attempt timed out; data stays buffered")

    async def _flush_mqtt(self, left: float) -> None:
        """Publish what is left (bounded), then ``offline`` / NDEATH and disconnect."""
        if self.mqtt is not None:
            await self.mqtt.flush(left)

    # -- live changes (a reload; see agent/reload.py) ---------------------------------------
    def _task_group(self) -> asyncio.TaskGroup:
        if self._tg is None:
            raise RuntimeError("the pipeline is not running")
        return self._tg

    def start_driver(self, driver: Driver) -> None:
        self.driver_restarts.setdefault(driver.name, 0)
        self._driver_tasks[driver.name] = self._task_group().create_task(
            self._driver_task(driver), name=f"driver:{driver.name}")

    async def stop_driver(self, name: str) -> None:
        """Cancel a driver's task; it closes its connection (bounded) before this returns."""
        task = self._driver_tasks.pop(name, None)
        if task is not None and not await cancel_until_done([task], DRIVER_STOP_S):
            log.error("driver did not stop", extra={"driver": name, "timeout_s": DRIVER_STOP_S})

    def start_registry(self, p: RegistryPoller) -> None:
        self._registry_tasks[p.source] = self._task_group().create_task(
            self._supervise(p.run, "registry_crashed", p.source, self.registry_restarts),
            name=f"registry:{p.source}")

    async def stop_registry(self, source: str) -> None:
        await cancelled(self._registry_tasks.pop(source, None))

    def start_sink(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a sink's delivery loop (supervised) as a named task a reload can restart."""
        self._sink_tasks[name] = self._task_group().create_task(
            self._supervise(run, f"{name}_crashed", self.cfg.agent.gateway_id,
                            self.sink_restarts.setdefault(name, {})),
            name=name)

    async def stop_sink(self, name: str) -> None:
        """Cancel a sink's loop: a batch in flight stays pending and is resent (same key)."""
        await cancelled(self._sink_tasks.pop(name, None))

    def start_uploader(self, uploader: Uploader | None) -> None:
        self.uploader = uploader
        if uploader is not None:
            self.start_sink("uploader", uploader.run)

    async def stop_uploader(self) -> None:
        await self.stop_sink("uploader")
        self.uploader = None

    def set_analysis(self, source: str, cfg: PipelineConfig | None,
                     analysis: Analysis | None) -> None:
        """Replace (or remove) one source's analysis chain between two blocks."""
        if cfg is None or analysis is None:
            self.analyses.pop(source, None)
            self.shaft_tags.pop(source, None)
            return
        self.analyses[source] = analysis
        self.shaft_tags[source] = getattr(cfg.features, "shaft_speed_tag", None)

    def registry_pollers(self) -> list[RegistryPoller]:
        """One model-registry poller per pipeline with a ``[pipelines.registry]`` table."""
        return [r for r in map(self.registry_poller, self.cfg.pipelines) if r is not None]

    def registry_poller(self, p: PipelineConfig) -> RegistryPoller | None:
        if p.registry is None:
            return None
        from edge_agent.models.registry.poller import RegistryPoller

        return RegistryPoller(
            p.registry, self.analyses[p.source], self.cfg.state_dir,
            self.cfg.agent.gateway_id, self._put,
            configured_model=resolve_model(p.model.path) if p.model else None,
            threads=p.model.threads if p.model else 1)

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

