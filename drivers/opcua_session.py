"""One connected OPC-UA session of the driver: subscriptions, poll groups, freshness watchdog.

A :class:`Session` lives from one ``open()`` to the next ``close()`` of
:class:`edge_agent.drivers.opcua.OpcUaDriver` and is never reused. Its tasks (one pump per
subscription, one loop per poll group, one watchdog) push records into a pending batch that
:meth:`Session.next_batch` hands out; any fatal condition is recorded once and raised from there
as :class:`SessionFailed`. The pending batch is bounded (a stalled consumer must not grow
memory without limit): beyond ``max(1000, 4 x the nodes' queue sizes)`` records or
``PENDING_MAX_SAMPLES`` waveform values the oldest records are dropped, counted in health as
``errors["dropped_backlog"]`` and ``detail["dropped_backlog"]``. The items, groups and request
builders it works from are in :mod:`edge_agent.drivers.opcua_items`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from asyncua import Client, ua

from edge_agent.drivers.base import DriverHealth, DriverOutput
from edge_agent.drivers.opcua_batchsub import BatchSubscription, create_batch_subscription
from edge_agent.drivers.opcua_convert import (
    ScalarRows,
    WaveformError,
    bad_reading,
    count_dropped,
    count_overflow,
    group_by,
    overflowed,
    status_name,
    to_rate,
    to_reading,
    to_waveform,
)
from edge_agent.drivers.opcua_items import (
    UA_ERRORS,
    Item,
    PollGroup,
    SubGroup,
    group_key,
    items_of,
    monitor_request,
    queue_size_of,
    read_request,
    subscription_params,
)
from edge_agent.drivers.opcua_monitor import (
    create_each,
    create_items,
    read_each,
    resolve_nodes,
    warn_quiet_waveforms,
)
from edge_agent.errors import DriverError
from edge_agent.records import Reading, ReadingBlock, WaveformBlock, weight

if TYPE_CHECKING:
    from edge_agent.drivers.opcua import Config

log = logging.getLogger(__name__)

_CONNECTION_GONE = {"BadShutdown", "BadSessionClosed", "BadConnectionClosed",
                    "BadSecureChannelClosed", "BadSessionIdInvalid", "BadServerHalted"}


PENDING_MAX_SAMPLES = 4_000_000        # waveform values held for the consumer (~32 MB float64)


class SessionFailed(DriverError):
    """The session cannot go on; the driver reconnects with a fresh client."""


class Session:
    def __init__(self, cfg: Config, client: Client, health: DriverHealth) -> None:
        self.cfg = cfg
        self.client = client
        self.health = health
        self._items = items_of(cfg)
        self._subs: list[SubGroup] = []
        self._polls: list[PollGroup] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: deque[Reading | ReadingBlock | WaveformBlock] = deque()
        self._pending_values = 0           # waveform values in _pending
        self.pending_max = max(1000, 4 * sum(queue_size_of(it.node) for it in self._items))
        self._rows = ScalarRows(self.pending_max, health)  # Good scalar values, as columns
        self._wake = asyncio.Event()
        self._failure: str | None = None
        self._next_handle = 1
        client.connection_lost_callback = self._on_lost

    # -- setup ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._resolve()
        await self._read_rates()
        for (mode, interval), items in sorted(group_by(self._items, group_key).items()):
            if mode == "subscription":
                g = SubGroup(interval, items)
                self._subs.append(g)
                await self._create_subscription(g)
            else:
                p = PollGroup(interval, [it for it in items if it.nodeid is not None])
                if p.items:
                    self._polls.append(p)
                    self._spawn(self._poll_loop(p))
        if self._subs:
            self._spawn(self._watchdog())
        self.health.detail["subscriptions"] = len(self._subs)
        self.health.detail["poll_groups"] = len(self._polls)

    async def _resolve(self) -> None:
        for it, why in (await resolve_nodes(self.client, self._items, self.health)).items():
            self._missing(it, why)

    async def _read_rates(self) -> None:
        """Sample rates first, so the first waveform notifications already have one."""
        rates = [it for it in self._items if it.rate_for is not None and it.nodeid is not None]
        if rates:
            results = await self.client.uaclient.read_attributes(
                [it.nodeid for it in rates if it.nodeid is not None], ua.AttributeIds.Value)
            for it, dv in zip(rates, results, strict=True):
                self.deliver(it, dv)

    def _missing(self, it: Item, reason: str) -> None:
        self.health.bad_points[it.spec.sensor_id] = reason
        self.health.error("missing_node")
        if it.rate_for is None:
            self._push(bad_reading(it.spec, reason, time.time()))

    async def _monitor(self, g: SubGroup, items: list[Item]) -> None:
        """Create monitored items; the ones the server refuses go to ``g.missing``."""
        assert g.sub is not None
        todo = [it for it in items if it.nodeid is not None]
        if not todo:
            return
        limit = float(self.cfg.timeout) + 1.0
        mirs = []
        for it in todo:
            mirs.append(monitor_request(it, self._next_handle))
            self._next_handle += 1
        try:
            results = await create_items(g.sub, mirs, limit)
        except UA_ERRORS as exc:
            if self._failure is not None:  # the connection is gone: no point asking again
                raise
            # The server refused the whole request (a fault, or no answer): find the node(s)
            # it chokes on by asking for each one alone, so one bad node costs that node only.
            log.warning("opcua monitored items refused as a batch; creating them one by one",
                        extra={"driver": self.cfg.name, "items": len(mirs),
                               "error": repr(exc)})
            results = await create_each(g.sub, mirs, limit)
        for it, mir, res in zip(todo, mirs, results, strict=True):
            if isinstance(res, ua.StatusCode | str):
                why = status_name(res) if isinstance(res, ua.StatusCode) else res
                self._missing(it, f"cannot monitor: {why}")
                log.warning("opcua node cannot be monitored",
                            extra={"driver": self.cfg.name, "sensor_id": it.spec.sensor_id,
                                   "node": it.spec.node, "reason": why})
                g.missing.append(it)
            else:
                g.handles[mir.RequestedParameters.ClientHandle] = it
                if self.health.bad_points.get(it.spec.sensor_id, "").startswith(
                        ("cannot monitor", "browse path")):
                    del self.health.bad_points[it.spec.sensor_id]

    async def _create_subscription(self, g: SubGroup) -> None:
        params = subscription_params(g.interval, self.cfg.keepalive_count)
        n_items = sum(queue_size_of(it.node) for it in g.items)
        g.sub = await create_batch_subscription(self.client, params, max(1000, 4 * n_items))
        g.created = time.monotonic()
        g.next_retry = g.created + float(self.cfg.missing_retry)
        await self._monitor(g, g.items)
        self._spawn(self._pump(g, g.sub))

    # -- running ----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # A pump or poll loop that dies would silently stop its nodes: turn it into a
            # reconnect instead, and keep the traceback in the log.
            log.error("internal task failed", extra={"driver": self.cfg.name}, exc_info=exc)
            self.health.error("internal")
            self._fail(f"internal task failed: {exc!r}")

    def _push(self, rec: Reading | WaveformBlock) -> None:
        self._rows.close_into(self._pending)  # values that came first stay first
        self._pending.append(rec)
        if isinstance(rec, WaveformBlock):
            self._pending_values += rec.samples.size
        dropped = 0
        while len(self._pending) > 1 and (len(self._pending) > self.pending_max
                                          or self._pending_values > PENDING_MAX_SAMPLES):
            old = self._pending.popleft()
            if isinstance(old, WaveformBlock):
                self._pending_values -= old.samples.size
            dropped += weight(old)
        count_dropped(self.health, dropped)
        self._wake.set()

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            log.warning("session failed", extra={"driver": self.cfg.name, "reason": reason})
        self._wake.set()

    async def _on_lost(self, exc: Exception) -> None:
        self.health.error("connection_lost")
        self._fail(f"connection lost: {exc!r}")

    def deliver(self, it: Item, dv: ua.DataValue) -> None:
        if self._rows.add(it, dv):  # the usual Good scalar value: a row, no Reading
            self._wake.set()
            return
        now = time.time()
        sid = it.spec.sensor_id
        if overflowed(dv.StatusCode):  # the server's queue for the node was full
            count_overflow(self.health, sid)
        if it.rate_for is not None:
            it.rate_for.rate = to_rate(dv)
            return
        if it.spec.waveform:
            it.notifications += 1
            try:
                self._push(to_waveform(it.spec, dv, it.rate, now))
            except WaveformError as exc:
                self.health.bad_points[sid] = str(exc)
                self.health.error("bad_waveform")
                return
            self.health.bad_points.pop(sid, None)
            return
        r = to_reading(it.spec, dv, now)
        if r.value is None:
            self.health.bad_points[sid] = str(r.metadata.get("reason"))
            self.health.error("bad_value")
        else:
            self.health.bad_points.pop(sid, None)
        self._push(r)

    async def _pump(self, g: SubGroup, sub: BatchSubscription) -> None:
        handles, deliver = g.handles, self.deliver
        while True:
            for notif in await sub.next():
                if isinstance(notif, list):
                    for mi in notif:
                        it = handles.get(mi.ClientHandle)
                        if it is not None:
                            deliver(it, mi.Value)
                        else:  # a handle we never gave out: counted, not guessed at
                            self.health.error("unknown_handle")
                    continue
                name = status_name(notif.Status)
                if name in _CONNECTION_GONE:
                    self._fail(f"subscription ended: {name}")
                    return
                log.warning("subscription status changed; rebuilding",
                            extra={"driver": self.cfg.name, "status": name})
                g.force_rebuild = True
            count_dropped(self.health, sub.dropped)
            sub.dropped = 0

    async def _poll_loop(self, p: PollGroup) -> None:
        params = read_request(p.items)
        next_t = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(float(self.cfg.timeout) + 1.0):
                    results = await self.client.uaclient.read(params)
            except ua.UaStatusCodeError as exc:
                # The server refused the whole Read (a service fault): drop the node(s) it
                # refuses alone from this group, so one bad node costs that node only.
                refused = await read_each(self.client, p.items, float(self.cfg.timeout) + 1.0)
                if len(refused) == len(p.items) or not refused:
                    self.health.error("poll")
                    self._fail(f"poll of {len(p.items)} node(s) refused: {exc!r}")
                    return
                for it, why in refused.items():
                    self._missing(it, f"cannot read: {why}")
                    log.warning("opcua node cannot be read",
                                extra={"driver": self.cfg.name, "sensor_id": it.spec.sensor_id,
                                       "node": it.spec.node, "reason": why})
                p.items = [it for it in p.items if it not in refused]
                params = read_request(p.items)
                continue
            except UA_ERRORS as exc:
                self.health.error("poll")
                self._fail(f"poll of {len(p.items)} node(s) failed: {exc!r}")
                return
            for it, dv in zip(p.items, results, strict=True):
                self.deliver(it, dv)
            next_t += p.interval
            now = time.monotonic()
            if next_t < now:
                self.health.error("overrun")
                next_t = now
            await asyncio.sleep(next_t - now)

    def _limit(self, g: SubGroup) -> float:
        return self.cfg.freshness_factor * g.interval * self.cfg.keepalive_count

    async def _watchdog(self) -> None:
        period = max(0.05, min(self._limit(g) for g in self._subs) / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for g in self._subs:
                if g.sub is None:
                    continue
                last = max(g.sub.last_publish_at or 0.0, g.created)
                if last > g.created:
                    g.rebuilds = 0  # the server spoke since the last (re)build
                if g.force_rebuild or now - last > self._limit(g):
                    await self._rebuild(g, now - last)
                elif g.missing and now >= g.next_retry:
                    await self._retry_missing(g)
                warn_quiet_waveforms(self.cfg.name, self.health, g, now)

    async def _rebuild(self, g: SubGroup, silent: float) -> None:
        assert g.sub is not None
        g.force_rebuild = False
        g.rebuilds += 1
        self.health.error("stale_subscription")
        self.health.detail["rebuilds"] = int(str(self.health.detail.get("rebuilds", 0))) + 1
        if g.rebuilds > self.cfg.max_rebuilds:
            self._fail(f"subscription at {g.interval:g}s silent after {g.rebuilds - 1} rebuilds")
            return
        log.warning("subscription silent; rebuilding",
                    extra={"driver": self.cfg.name, "interval_s": g.interval,
                           "silent_s": round(silent, 1)})
        try:
            async with asyncio.timeout(float(self.cfg.timeout) * 2):
                await g.sub.recreate()
        except UA_ERRORS as exc:
            self._fail(f"rebuilding a silent subscription failed: {exc!r}")
            return
        g.created = time.monotonic()

    async def _retry_missing(self, g: SubGroup) -> None:
        items, g.missing = g.missing, []
        g.next_retry = time.monotonic() + float(self.cfg.missing_retry)
        try:
            async with asyncio.timeout(float(self.cfg.timeout) * 2):
                await self._monitor(g, items)
        except UA_ERRORS as exc:
            self._fail(f"re-subscribing missing nodes failed: {exc!r}")

    async def next_batch(self) -> DriverOutput:
        while True:
            if self._pending or len(self._rows):
                out: DriverOutput = [*self._pending, *self._rows.take()]
                self._pending.clear()
                self._pending_values = 0
                return out
            if self._failure is not None:
                raise SessionFailed(self._failure)
            self._wake.clear()
            await self._wake.wait()

    # -- teardown ---------------------------------------------------------------------------
    async def stop(self, *, limit_s: float) -> None:
        """Cancel our tasks, close the session (bounded), make sure the socket is gone."""
        self.client.connection_lost_callback = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            async with asyncio.timeout(limit_s):
                await self.client.disconnect()
        except UA_ERRORS as exc:
            log.info("disconnect failed; forcing",
                     extra={"driver": self.cfg.name, "error": repr(exc)})
        finally:
            await self._force_down()

    async def _force_down(self) -> None:
        c = self.client
        c.uaclient.request_disconnect()
        for name in ("_stale_watchdog_task", "_supervisor_task", "_renew_channel_task"):
            task = getattr(c, name, None)
            if isinstance(task, asyncio.Task) and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    if not task.cancelled():
                        raise
        c.disconnect_socket()
