"""The durable SQLite buffer: one writer thread, group commit, quotas, crash and corruption safety.

``await buffer.put(records)`` returns only once the records are committed (that is the
acknowledgement). All SQLite work happens in one dedicated writer thread that owns the
connection and serializes the records (:mod:`.convert`, :mod:`.pack`); puts queued while a
commit is in flight are committed together (group commit: up to ``commit_rows`` rows; a group
of fewer than 1000 rows lingers up to ``commit_interval`` for more), so the event loop never
waits on fsync and many small puts share one transaction. The uploader's batch bookkeeping
runs on the same thread (see :meth:`Buffer.call`), so there is exactly one writer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from edge_agent.confkit import ByteSize, Duration, field
from edge_agent.records import Event, FeatureVector, Reading, Severity, now

from . import quota, schema
from .convert import Converted, convert, event_body
from .files import BufferUnavailable, Corrupt, move_aside, open_store
from .quarantine import requeue_conn
from .space import DiskRoom
from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = ["Buffer", "BufferClosed", "BufferConfig", "BufferUnavailable"]

SQLITE_FULL = 13


@dataclass(frozen=True)
class BufferConfig:
    """Section ``[buffer]`` of the agent configuration."""

    path: str = "buffer.db"
    max_size: ByteSize = field(ByteSize(2 * 1024**3), ge=1024**2)
    max_age: Duration = field(Duration(30 * 86400), gt=0)
    reserved_for_events: ByteSize = ByteSize(64 * 1024**2)
    commit_interval: Duration = field(Duration(0.005), ge=0, le=1)
    commit_rows: int = field(5000, gt=0)
    synchronous: Literal["normal", "full"] = "normal"
    housekeeping_interval: Duration = field(Duration(10.0), gt=0)
    integrity_check: Literal["after_crash", "always", "never"] = "after_crash"
    # Released on SQLITE_FULL so delivered rows can still be deleted and the WAL checkpointed
    # (see sync/space.py); scaled down on a small file system. 0 disables it.
    ballast_size: ByteSize = field(ByteSize(4 * 1024**2), ge=0)
    # Over the quota (sync/quota.py): "thin" keeps every thin_factor-th reading of each sensor
    # and feature vector of each source, densest spans first (so the resolution stays even
    # across the outage), until the backlog is thin_max times sparser than it came in; only
    # then are the oldest spans dropped. "drop_oldest": oldest readings first, then features.
    quota_policy: Literal["thin", "drop_oldest"] = "thin"
    thin_factor: int = field(2, ge=2, le=1000)
    thin_max: int = field(64, ge=1)
    drop_event_interval: Duration = field(Duration(60.0), gt=0)  # one buffer_quota_drop each

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.reserved_for_events >= self.max_size:
            out.append(("reserved_for_events", "must be smaller than max_size"))
        return out


class BufferClosed(RuntimeError):
    """The buffer is not running (not started, closed, or its writer failed)."""


@dataclass
class _Put:
    records: Sequence[object]
    fut: asyncio.Future[None]


@dataclass
class _Call:
    fn: Callable[[Store], Any]
    fut: asyncio.Future[Any]


_STOP = object()
# What serializing a bad record can raise (wrong types, NaN timestamps, circular or too deep
# details, out-of-range times).
_BAD_RECORD = (TypeError, ValueError, AttributeError, ArithmeticError, RecursionError, OSError)
# A commit group linger (commit_interval) for more puts only while it holds fewer rows than this:
# small puts share one commit (one fsync at FULL), big ones are committed at once. Producers
# waiting for their ack cannot add to a group, so lingering then is pure idle time.
_LINGER_BELOW = 1000


class Buffer:
    def __init__(self, path: Path, cfg: BufferConfig,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.on_event = on_event
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: Store | None = None
        self._dead: BaseException | None = None
        self._closed = False
        self._own_events: list[Event] = []
        self._next_house = 0.0
        self.data_event = asyncio.Event()
        self.moved_aside: list[str] = []
        self.disk_errors = 0
        self._disk_episode = False
        self.commits = 0
        self.rows_committed = 0
        self.dropped_total = 0
        self.dropped_thinned = 0  # of dropped_total: removed by thinning (sync/quota.py)
        self._used = 0
        self._dropped_snap: dict[str, int] = {}
        self._dropped_kinds: dict[str, dict[str, int]] = {}
        self._notices = quota.DropNotices(float(cfg.drop_event_interval))
        self._stopping = threading.Event()
        self._room: DiskRoom | None = None
        self._emergency = False  # recovering from SQLITE_FULL: the quota drops, never thins
        # Jobs taken off the queue while a failed write waited for its retry (see _wait_retry)
        self._held: deque[object] = deque()

    # -- async API ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.data_event = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="buffer-writer", daemon=True)
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._thread.start()
        await self._opened
        self.data_event.set()

    async def put(self, records: Sequence[Reading | FeatureVector | Event]) -> None:
        """Commit ``records``; returns once they are durable in the buffer (the ack)."""
        if not records:
            return
        fut = self._check().create_future()
        # Serialized by the writer thread (it holds the GIL for it instead of the event loop;
        # a bad record fails this put only, with ValueError).
        self._q.put(_Put(tuple(records), fut))
        await fut

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the writer thread (the only thread touching SQLite)."""
        return await self.submit(fn)

    def submit(self, fn: Callable[[Store], T]) -> asyncio.Future[T]:
        """Queue ``fn(store)`` for the writer thread now (synchronously) and return its future.

        Once queued it runs even if the caller stops waiting (e.g. ``asyncio.shield`` it)."""
        fut: asyncio.Future[T] = self._check().create_future()
        self._q.put(_Call(fn, fut))
        return fut

    async def requeue(self, qid: int) -> int:
        """Re-queue quarantined batch ``qid`` through the writer (keeps counters exact)."""
        def go(s: Store) -> int:
            n = requeue_conn(s.conn, qid)
            s.recount()
            return n
        n = await self.call(go)
        self.data_event.set()
        return n

    async def close(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Commit everything queued, mark a clean shutdown and stop the writer.

        Bounded: on a failing disk each queued group gets one more try; after ``timeout`` the
        writer thread (a daemon) is left behind with a warning."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._q.put(_STOP)
        await asyncio.to_thread(self._thread.join, timeout)
        if self._thread.is_alive():
            log.warning("buffer writer did not stop in time", extra={"timeout_s": timeout})

    def stats(self) -> dict[str, object]:
        s = self._store
        rows = dict(s.rows) if s else {}
        heads = [h for h in (s.head_ts.values() if s else ()) if h is not None]
        try:
            file_bytes = self.path.stat().st_size
        except OSError:
            file_bytes = 0
        return {
            "rows_queued": rows, "rows_queued_total": sum(rows.values()),
            "bytes_queued": self._used, "events_bytes": s.events_bytes if s else 0,
            "file_bytes": file_bytes,
            "oldest_unsent_age_s": max(0.0, now() - min(heads) / 1e6) if heads else 0.0,
            "dropped_total": self.dropped_total,
            "dropped_by_sensor": dict(self._dropped_snap),
            "dropped_by_kind": {k: dict(v) for k, v in self._dropped_kinds.items()},
            "dropped_thinned": self.dropped_thinned,
            "quarantined": s.quarantined if s else 0, "disk_errors": self.disk_errors,
            "commits": self.commits, "rows_committed": self.rows_committed,
            "moved_aside": list(self.moved_aside),
            **(self._room.stats() if self._room is not None else {}),
        }

    def _check(self) -> asyncio.AbstractEventLoop:
        if self._dead is not None:
            raise BufferClosed(f"buffer writer failed: {self._dead!r}")
        if self._loop is None or self._closed:
            raise BufferClosed("buffer is not running")
        return self._loop

    # -- writer thread --------------------------------------------------------------------
    def _resolve(self, fut: asyncio.Future[Any], result: Any = None,
                 exc: BaseException | None = None) -> None:
        def done() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(done)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # supervisor: a bug here must not hang every waiting put
            log.exception("buffer writer failed")
            self._dead = exc
            while True:
                try:
                    job = self._q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(job, _Put | _Call):
                    self._resolve(job.fut, exc=BufferClosed(f"buffer writer failed: {exc!r}"))

    def _serve(self) -> None:
        try:
            store = self._open()
        except (sqlite3.Error, OSError, schema.SchemaTooNew) as exc:
            self._dead = exc
            self._resolve(self._opened, exc=exc)
            return
        self._store = store
        try:
            self._room = DiskRoom(self.path, self.cfg.ballast_size)
            self._room.tune(store.conn)
            self._room.ensure_ballast()
        except (OSError, sqlite3.Error) as exc:
            log.warning("buffer runs without free-space awareness", extra={"error": str(exc)})
        quota.ensure_tables(store)
        self._dropped_snap = store.dropped_by_sensor()
        self._dropped_kinds = quota.dropped_by_kind(store)
        self._used = store.used_bytes()
        self._resolve(self._opened)
        carry: object | None = None
        while True:
            if carry is not None:
                job, carry = carry, None
            else:
                try:
                    job = self._next(self.cfg.housekeeping_interval)
                except queue.Empty:
                    self._housekeep(store, force=True)
                    continue
            if job is _STOP:
                break
            if isinstance(job, _Call):
                self._call(store, job)
                continue
            assert isinstance(job, _Put)
            group, n = [job], len(job.records)
            deadline = time.monotonic() + self.cfg.commit_interval
            while n < self.cfg.commit_rows:
                try:
                    nxt = self._next(None)  # everything already queued joins the group
                except queue.Empty:
                    if n >= _LINGER_BELOW:  # big enough: lingering would only add latency
                        break
                    try:
                        nxt = self._next(max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                if not isinstance(nxt, _Put):
                    carry = nxt
                    break
                group.append(nxt)
                n += len(nxt.records)
            self._commit(store, group)
            self._housekeep(store)
        try:
            self._notify_drops(final=True)
            self._own_flush(store)
            store.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', '1')")
        except sqlite3.Error as exc:  # left unclean: quick_check at the next start
            log.warning("buffer closed without marking a clean shutdown: %s", exc)
        finally:
            store.conn.close()

    def _commit(self, store: Store, group: list[_Put]) -> None:
        rows, ok = Converted(), []
        for put in group:
            try:
                rows.merge(convert(put.records, store.packer))
            except _BAD_RECORD as exc:  # that put fails alone; the writer goes on
                self._resolve(put.fut, exc=ValueError(f"not buffered: {exc}"))
                continue
            ok.append(put)
        if rows.n_rows:
            err = self._write(store, rows)
            if err is not None:
                for put in ok:
                    self._resolve(put.fut, exc=BufferClosed(
                        f"closed while the disk kept failing ({err}); these records were not "
                        "buffered"))
                return
            self.commits += 1
            self.rows_committed += rows.n_rows
        for put in ok:
            self._resolve(put.fut)
        if rows.n_rows and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.data_event.set)
            except RuntimeError:
                pass

    def _write(self, store: Store, rows: Converted) -> sqlite3.Error | None:
        """Insert, retrying disk errors (full disk, I/O) until it works or the buffer closes.

        Returns the disk error only when closing while the disk still fails: once close() has
        been called, each group gets one more try and is then given up (its puts fail, nothing
        is acknowledged), so close() returns in bounded time."""
        delay = 0.2
        while True:
            own = [event_body(e) for e in self._own_events]
            try:
                store.insert(Converted(rows.readings, rows.features, rows.events + own))
            except sqlite3.Error as exc:
                self._disk_error(store, exc)
                # Back-pressure: puts wait while we retry (delivery goes on meanwhile);
                # close() interrupts the wait.
                if self._wait_retry(store, delay):
                    try:
                        store.insert(Converted(rows.readings, rows.features, rows.events + own))
                    except sqlite3.Error as again:
                        self.disk_errors += 1
                        return again
                    self._own_events.clear()
                    return None
                delay = min(delay * 2, 30.0)
                continue
            self._own_events.clear()
            if self._disk_episode:
                self._disk_episode = False
                self._emit("buffer_disk_recovered", "info", {"disk_errors": self.disk_errors})
            return None

    def _disk_error(self, store: Store, exc: sqlite3.Error) -> None:
        self.disk_errors += 1
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        log.warning("buffer write failed (%s); retrying", exc)
        if not self._disk_episode:
            self._disk_episode = True
            self._emit("buffer_disk_error", "critical",
                       {"error": str(exc), "code": getattr(exc, "sqlite_errorname", "")})
        if code != SQLITE_FULL or self._stopping.is_set():  # closing: one try, no recovery
            return
        before = self.dropped_total
        if self._room is not None:
            # Room to drop, vacuum and checkpoint (sync/space.py), used at once: the quota
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
                log.warning("could not free space in the buffer: %s", again)

    def _next(self, timeout: float | None) -> object:
        """The next job: held ones first (see :meth:`_wait_retry`), then the queue
        (``timeout`` None: do not wait; raises ``queue.Empty``)."""
        if self._held:
            return self._held.popleft()
        if timeout is None:
            return self._q.get_nowait()
        return self._q.get(timeout=timeout)

    def _wait_retry(self, store: Store, delay: float) -> bool:
        """Wait ``delay`` before retrying a failed write, running the uploader's calls
        meanwhile: delivering (and deleting) rows is what frees the space, so a full disk must
        not stop it. Puts are held, in order, for after the retry. True once closing."""
        end = time.monotonic() + delay
        while not self._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            try:
                job = self._q.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(job, _Call):
                self._call(store, job)
            else:
                self._held.append(job)
        return self._stopping.is_set()

    def _call(self, store: Store, job: _Call) -> None:
        """Run one call; on SQLITE_FULL release the ballast and try it once more."""
        for attempt in (1, 2):
            try:
                self._resolve(job.fut, job.fn(store))
                return
            except sqlite3.Error as exc:
                store.recount()  # a failed commit may have left the row counters ahead
                full = getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL
                if attempt == 1 and full and self._room is not None:
                    self.disk_errors += 1
                    if self._room.release_ballast():
                        continue
                self._resolve(job.fut, exc=exc)
                return
            except (ValueError, TypeError, LookupError) as exc:
                self._resolve(job.fut, exc=exc)
                return

    def _emit(self, kind: str, severity: Severity, details: dict[str, Any]) -> None:
        ev = Event(kind=kind, source_id="buffer", timestamp=now(), severity=severity,
                   details=details)
        self._own_events.append(ev)
        log.log(logging.WARNING if severity != "info" else logging.INFO, "%s %s", kind, details)
        if self.on_event is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.on_event, ev)
            except RuntimeError:
                pass

    def _own_flush(self, store: Store) -> None:
        if self._own_events:
            self._write(store, Converted())

    # -- space ----------------------------------------------------------------------------
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
                log.warning("buffer housekeeping failed: %s", exc)
                store.recount()  # a failed drop may have left the row counters behind
                full = getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL
                # On SQLITE_FULL the ballast makes room to drop, vacuum and checkpoint now,
                # before any new row can take that room.
                if attempt == 2 or not full or self._room is None:
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

    # -- open / corruption ----------------------------------------------------------------
    def _open(self) -> Store:
        try:
            return open_store(self.path, self.cfg.synchronous, self.cfg.integrity_check)
        except Corrupt as exc:
            reason = str(exc)
        moved = move_aside(self.path)
        self.moved_aside.append(moved)
        log.error("buffer %s unusable (%s); moved aside to %s", self.path, reason, moved)
        store = open_store(self.path, self.cfg.synchronous, self.cfg.integrity_check)
        self._emit("buffer_corrupt_moved_aside", "critical",
                   {"path": str(self.path), "moved_to": moved, "reason": reason})
        self._own_flush(store)
        return store
