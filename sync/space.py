"""The buffer's space: quotas (size, age, free disk) and what a full disk does (a mixin of
:class:`.Buffer`).

Runs on the buffer's writer thread only. The quota is the smaller of ``max_size`` and what the
file system allows (:class:`.diskroom.DiskRoom`); what is given up over it is chosen by
:mod:`.quota` (thin evenly, then drop oldest; never a row in a sink's pending batch). See
``sync/NOTES.md`` (Quotas, Full disk) for the policy.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.records import Severity, now

from . import quota
from .diskroom import DiskRoom
from .store import Store

if TYPE_CHECKING:
    import asyncio

    from .buffer import BufferConfig

log = logging.getLogger(__name__)
SQLITE_FULL = 13


@dataclass
class Call:
    """A function run on the writer thread (:meth:`.Buffer.call`)."""

    fn: Callable[[Store], Any]
    fut: asyncio.Future[Any]


def _full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL


class SpaceMixin:
    """Quota drops, housekeeping, the reaction to SQLITE_FULL and delivery while a write
    waits for disk space."""

    cfg: BufferConfig
    disk_errors: int
    dropped_total: int
    dropped_thinned: int
    _dropped_snap: dict[str, int]
    _dropped_kinds: dict[str, dict[str, int]]
    _notices: quota.DropNotices
    _room: DiskRoom | None
    _emergency: bool
    _used: int
    _next_house: float
    _disk_episode: bool
    _stopping: threading.Event
    _q: queue.SimpleQueue[object]
    _held: deque[object]

    def _emit(self, kind: str, severity: Severity, details: dict[str, Any]) -> None:
        raise NotImplementedError

    def _own_flush(self, store: Store) -> None:
        raise NotImplementedError

    def _resolve(self, fut: asyncio.Future[Any], result: Any = None,
                 exc: BaseException | None = None) -> None:
        raise NotImplementedError

    # -- a failing disk -------------------------------------------------------------------
    def _disk_error(self, store: Store, exc: sqlite3.Error) -> None:
        self.disk_errors += 1
        log.warning("buffer write failed; retrying", extra={"error": str(exc)})
        if not self._disk_episode:
            self._disk_episode = True
            self._emit("buffer_disk_error", "critical",
                       {"error": str(exc), "code": getattr(exc, "sqlite_errorname", "")})
        if not _full(exc) or self._stopping.is_set():  # closing: one try, no recovery
            return
        before = self.dropped_total
        if self._room is not None:
            # Room to drop, vacuum and checkpoint (sync/diskroom.py), used at once: the quota
            # pass sees the disk's real limit. It drops whole spans (deleting needs little WAL;
            # thinning rewrites chunks, which a full disk may not have room for).
            self._room.release_ballast()
            self._emergency = True
            try:
                self._housekeep(store, flush=False)
            finally:
                self._emergency = False
        if self.dropped_total == before:
            # Free pages inside the file for new rows: drop the oldest raw readings (counted).
            try:
                self._drop_bulk(store, max(1000, store.rows["readings"] // 10), "disk_full")
            except sqlite3.Error as again:
                log.warning("could not free space in the buffer", extra={"error": str(again)})

    def _next(self, timeout: float | None) -> object:
        """The next job: held ones first (see :meth:`_wait_retry`), then the queue
        (``timeout`` None: do not wait; raises ``queue.Empty``)."""
        if self._held:
            return self._held.popleft()
        if timeout is None:
            return self._q.get_nowait()
        return self._q.get(timeout=timeout)

    def _wait_retry(self, store: Store, delay: float) -> bool:
        """Wait ``delay`` before retrying a failed write, running the sinks' calls meanwhile:
        delivering (and deleting) rows is what frees the space, so a full disk must not stop
        it. Puts (and the stop) are held, in order, for after the retry. True once closing."""
        end = time.monotonic() + delay
        while not self._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            try:
                job = self._q.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(job, Call):
                self._call(store, job)
            else:
                self._held.append(job)
        return self._stopping.is_set()

    def _call(self, store: Store, job: Call) -> None:
        """Run one call; on SQLITE_FULL release the ballast and try it once more."""
        for attempt in (1, 2):
            try:
                self._resolve(job.fut, job.fn(store))
                return
            except sqlite3.Error as exc:
                store.recount()  # a failed commit may have left the row counters ahead
                if attempt == 1 and _full(exc) and self._room is not None:
                    self.disk_errors += 1
                    if self._room.release_ballast():
                        continue
                self._resolve(job.fut, exc=exc)
                return
            except (ValueError, TypeError, LookupError) as exc:
                self._resolve(job.fut, exc=exc)
                return

    # -- quota ----------------------------------------------------------------------------
    def _drop_bulk(self, store: Store, n: int, reason: str,
                   older_than_us: int | None = None) -> int:
        """Drop about ``n`` of the oldest rows whole (by age, or to get out of SQLITE_FULL)."""
        before = store.dropped_by_sensor()
        got = store.drop_oldest("readings", n, older_than_us)
        out = quota.Dropped()
        if got < n:
            quota.drop_features(store, n - got, out, older_than_us)
        after = store.dropped_by_sensor()
        out.readings.update({k: v - before.get(k, 0) for k, v in after.items()
                             if v != before.get(k, 0)})
        self._dropped(store, reason, out)
        return got + sum(out.features.values())

    def _dropped(self, store: Store, reason: str, out: quota.Dropped) -> None:
        """Count what was given up; the event is coalesced (one per drop_event_interval)."""
        if out.total:
            self.dropped_total += out.total
            self.dropped_thinned += out.thinned
            self._dropped_snap = store.dropped_by_sensor()
            self._dropped_kinds = quota.dropped_by_kind(store)
            self._notices.add(reason, out)
        self._notify_drops()

    def _notify_drops(self, final: bool = False) -> None:
        details = self._notices.due(final=final)
        if details is not None:
            self._emit("buffer_quota_drop", "warning", details)

    def _housekeep(self, store: Store, force: bool = False, flush: bool = True) -> None:
        emergency = self._emergency
        for attempt in (1, 2):
            try:
                self._emergency = emergency or attempt == 2  # after SQLITE_FULL: drop only
                self._space(store, force, flush)
                return
            except sqlite3.Error as exc:
                self.disk_errors += 1
                log.warning("buffer housekeeping failed", extra={"error": str(exc)})
                store.recount()  # a failed drop may have left the row counters behind
                # On SQLITE_FULL the ballast makes room to drop, vacuum and checkpoint now,
                # before any new row can take that room.
                if attempt == 2 or not _full(exc) or self._room is None:
                    return
                self._room.release_ballast()  # then try again, dropping only
            finally:
                self._emergency = emergency

    def _space(self, store: Store, force: bool, flush: bool = True) -> None:
        cfg = self.cfg
        if self._room is not None:
            self._room.checkpoint(store.conn)
        self._used = used = store.used_bytes()
        ev = store.events_bytes
        disk = self._room.limit() if self._room is not None else cfg.max_size
        limit = min(cfg.max_size, disk)
        # On a disk smaller than max_size the event reserve shrinks in proportion.
        reserve = min(cfg.reserved_for_events, cfg.reserved_for_events * limit // cfg.max_size)
        bulk_limit = limit - max(reserve, ev)
        if used - ev > bulk_limit and store.rows["readings"] + store.rows["features"]:
            need = int(used - ev - 0.9 * max(bulk_limit, 0)) + 1
            policy = "drop_oldest" if self._emergency else cfg.quota_policy
            self._dropped(store, "max_size" if limit < disk else "disk_space", quota.make_room(
                store, need, policy, cfg.thin_factor, cfg.thin_max))
            if self._room is not None:
                self._room.shrink(store)
            else:
                store.vacuum(max_pages=1 << 30)
            self._used = store.used_bytes()
        t = time.monotonic()
        if force or t >= self._next_house:
            self._next_house = t + cfg.housekeeping_interval
            cutoff = int((now() - cfg.max_age) * 1e6)
            for _ in range(100):
                if self._drop_bulk(store, 50_000, "max_age", older_than_us=cutoff) < 50_000:
                    break
            total, free = store.pages()
            if free * store.page_size > max(1024**2, total * store.page_size // 4):
                store.vacuum(max_pages=(256 * 1024**2) // store.page_size)
            self._used = store.used_bytes()
            if self._room is not None:
                self._room.ensure_ballast()
            quota.reset_if_empty(store)
            self._notify_drops()
        if flush:
            self._own_flush(store)
