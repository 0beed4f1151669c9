"""The durable SQLite buffer: one writer thread, group commit, quotas, crash and corruption safety.

``await buffer.put(records)`` returns only once the records are committed (that is the
acknowledgement). All SQLite work happens in one dedicated writer thread that owns the
connection and serializes the records (:mod:`.convert`, :mod:`.pack`); puts queued while a
commit is in flight are committed together (group commit: up to ``commit_rows`` rows; a group
of fewer than 1000 rows lingers up to ``commit_interval`` for more), so the event loop never
waits on fsync and many small puts share one transaction. The sinks' delivery transactions
(:meth:`Buffer.sink`, :class:`.sinks.SinkHandle`) run on the same thread, so there is exactly
one writer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field

from edge_agent.backoff import Backoff
from edge_agent.errors import BufferClosed as BufferClosed
from edge_agent.records import Event, FeatureVector, Reading, ReadingBlock, Severity, now
from edge_agent.settings import ByteSize, Duration, Model

from . import quota, schema
from .convert import BAD_RECORD, Converted, convert, event_body
from .delivery import Table
from .diskroom import DiskRoom
from .files import BufferUnavailable, Corrupt, move_aside, open_store
from .quarantine import requeue_conn
from .sinks import SinkHandle, check_sink
from .space import Call as _Call
from .space import SpaceMixin
from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = ["Buffer", "BufferClosed", "BufferConfig", "BufferUnavailable"]

# Retrying a failing disk (full, I/O errors): the agent's one backoff policy.
DISK_RETRY = Backoff(initial=0.2, maximum=30.0)


class BufferConfig(Model):
    """Section ``[buffer]`` of the agent configuration."""

    path: str = "buffer.db"
    max_size: ByteSize = Field(2 * 1024**3, ge=1024**2)
    max_age: Duration = Field(30 * 86400, gt=0)
    reserved_for_events: ByteSize = 64 * 1024**2
    commit_interval: Duration = Field(0.005, ge=0, le=1)
    commit_rows: int = Field(5000, gt=0)
    synchronous: Literal["normal", "full"] = "normal"
    housekeeping_interval: Duration = Field(10.0, gt=0)
    integrity_check: Literal["after_crash", "always", "never"] = "after_crash"
    # Released on SQLITE_FULL so delivered rows can still be deleted and the WAL checkpointed
    # (see sync/diskroom.py); scaled down on a small file system. 0 disables it.
    ballast_size: ByteSize = Field(4 * 1024**2, ge=0)
    # Over the quota (sync/quota.py): "thin" keeps every thin_factor-th reading of each sensor
    # and feature vector of each source, densest spans first (so the resolution stays even
    # across the outage), until the backlog is thin_max times sparser than it came in; only
    # then are the oldest spans dropped. "drop_oldest": oldest readings first, then features.
    quota_policy: Literal["thin", "drop_oldest"] = "thin"
    thin_factor: int = Field(2, ge=2, le=1000)
    thin_max: int = Field(64, ge=1)
    drop_event_interval: Duration = Field(60.0, gt=0)  # one buffer_quota_drop event each

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.reserved_for_events >= self.max_size:
            out.append(("reserved_for_events", "must be smaller than max_size"))
        return out


@dataclass
class _Put:
    records: Sequence[object]
    fut: asyncio.Future[None]


_STOP = object()
# A commit group linger (commit_interval) for more puts only while it holds fewer rows than this:
# small puts share one commit (one fsync at FULL), big ones are committed at once. Producers
# waiting for their ack cannot add to a group, so lingering then is pure idle time.
_LINGER_BELOW = 1000


class Buffer(SpaceMixin):
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
        self._handles: dict[str, SinkHandle] = {}
        self._last_ts: dict[str, int] = {}
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
        # Jobs taken off the queue while a failed write waited for its retry (_wait_retry)
        self._held: deque[object] = deque()

    # -- async API ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="buffer-writer", daemon=True)
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._thread.start()
        await self._opened
        for h in self._handles.values():
            h.registered = self._register(h)
        self.wake()

    def sink(self, name: str, tables: Iterable[Table], key_prefix: str | None = None
             ) -> SinkHandle:
        """Register the named sink consuming ``tables`` and return its handle (the same handle
        for the same name). Register every sink before running any: a row is deleted once
        every *registered* consumer of its table has delivered it. A sink new to this database
        sees the rows still buffered; a known one resumes where it stopped. ``key_prefix``
        (default: the name) starts its batch keys: ``<key_prefix>:<db epoch>:<batch id>``."""
        wanted = frozenset(tables)
        h = self._handles.get(name)
        if h is not None:
            if h.tables != wanted or h.key_prefix != (key_prefix or name):
                raise ValueError(f"sink {name!r} is already registered with other tables or "
                                 "key prefix")
            return h
        check_sink(name, wanted, key_prefix or name)
        h = self._handles[name] = SinkHandle(self, name, wanted, key_prefix or name)
        if self._loop is not None and not self._closed:
            h.registered = self._register(h)
        return h

    @property
    def known_sinks(self) -> list[str]:
        """Every sink that has a cursor in this database (registered now or in earlier runs)."""
        return sorted(self._store.cursors) if self._store is not None else []

    async def retire_sink(self, name: str) -> None:
        """Forget a sink removed from the configuration (cursors and pending batches), so the
        rows its pending batches held are freed once the registered sinks have them."""
        if name in self._handles:
            raise ValueError(f"sink {name!r} is registered in this run")
        await self.call(lambda s: s.retire(name))

    def _register(self, h: SinkHandle) -> asyncio.Future[None]:
        return self.submit(lambda s: s.register(h.name, h.tables))

    def wake(self, tables: Iterable[str] = ("events", "features", "readings")) -> None:
        """Tell the sinks consuming ``tables`` that there is new data (event loop thread)."""
        hit = set(tables)
        for h in self._handles.values():
            if h.tables & hit:
                h.data.set()

    @property
    def last_timestamps(self) -> dict[str, int]:
        """The newest reading timestamp (µs) committed per sensor_id, as read at start."""
        return dict(self._last_ts)

    async def put(self, records: Sequence[Reading | ReadingBlock | FeatureVector | Event]
                  ) -> None:
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
        self.wake()
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
            "commit_lag_ms": s.lag.summary() if s else {},
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
        self._last_ts = store.last_timestamps()
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
            store.mark_clean()
        except sqlite3.Error as exc:  # left unclean: quick_check at the next start
            log.warning("buffer closed without marking a clean shutdown", extra={"error": str(exc)})
        finally:
            store.conn.close()

    def _commit(self, store: Store, group: list[_Put]) -> None:
        rows, ok = Converted(), []
        for put in group:
            try:
                convert(put.records, store.packer, rows)  # a bad put leaves rows as they were
            except BAD_RECORD as exc:  # that put fails alone; the writer goes on
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
            tables = [t for t, n in (("events", len(rows.events)),
                                     ("features", len(rows.features)),
                                     ("readings", rows.n_readings)) if n]
            try:
                self._loop.call_soon_threadsafe(self.wake, tables)
            except RuntimeError:
                pass

    def _write(self, store: Store, rows: Converted) -> sqlite3.Error | None:
        """Insert, retrying disk errors (full disk, I/O) until it works or the buffer closes.

        Returns the disk error only when closing while the disk still fails: once close() has
        been called, each group gets one more try and is then given up (its puts fail, nothing
        is acknowledged), so close() returns in bounded time."""
        retrier = DISK_RETRY.retrier()
        while True:
            own = [event_body(e) for e in self._own_events]
            try:
                store.insert(Converted(rows.readings, rows.features, rows.events + own))
            except sqlite3.Error as exc:
                self._disk_error(store, exc)
                # Back-pressure: puts wait while we retry (delivery goes on meanwhile,
                # _wait_retry); close() interrupts the wait.
                if self._wait_retry(store, retrier.next_delay()):
                    try:
                        store.insert(Converted(rows.readings, rows.features, rows.events + own))
                    except sqlite3.Error as again:
                        self.disk_errors += 1
                        return again
                    self._own_events.clear()
                    return None
                continue
            self._own_events.clear()
            if self._disk_episode:
                self._disk_episode = False
                self._emit("buffer_disk_recovered", "info", {"disk_errors": self.disk_errors})
            return None

    def _emit(self, kind: str, severity: Severity, details: dict[str, Any]) -> None:
        ev = Event(kind=kind, source_id="buffer", timestamp=now(), severity=severity,
                   details=details)
        self._own_events.append(ev)
        log.log(logging.WARNING if severity != "info" else logging.INFO, "buffer event",
                extra={"kind": kind, "details": details})
        if self.on_event is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.on_event, ev)
            except RuntimeError:
                pass

    def _own_flush(self, store: Store) -> None:
        if self._own_events:
            self._write(store, Converted())

    # -- open / corruption ----------------------------------------------------------------
    def _open(self) -> Store:
        try:
            return open_store(self.path, self.cfg.synchronous, self.cfg.integrity_check)
        except Corrupt as exc:
            reason = str(exc)
        moved = move_aside(self.path)
        self.moved_aside.append(moved)
        log.error("buffer unusable; moved aside", extra={"path": str(self.path), "reason": reason,
                                                         "moved_to": moved})
        store = open_store(self.path, self.cfg.synchronous, self.cfg.integrity_check)
        self._emit("buffer_corrupt_moved_aside", "critical",
                   {"path": str(self.path), "moved_to": moved, "reason": reason})
        self._own_flush(store)
        return store
