"""The durable SQLite buffer: one writer thread, group commit, quotas, crash and corruption safety.

``await buffer.put(records)`` returns only once the records are committed (that is the
acknowledgement). All SQLite work happens in one dedicated writer thread that owns the
connection and serializes the records (:mod:`.convert`, :mod:`.pack`); puts queued while a
commit is in flight are committed together (group commit: up to ``commit_rows`` rows; a group
of fewer than 1000 rows lingers up to ``commit_interval`` for more), so the event loop never
waits on fsync and many small puts share one transaction. The sinks' delivery transactions
(:meth:`Buffer.sink`, :class:`.sinks.SinkHandle`) run on the same thread, so there is exactly
one writer. The writer thread's loop, group commit and disk retries are in :mod:`.writer`;
quotas and the full disk in :mod:`.space`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field

from edge_agent.errors import BufferClosed as BufferClosed
from edge_agent.records import Event, FeatureVector, Reading, ReadingBlock, now
from edge_agent.settings import ByteSize, Duration, Model

from . import quota, schema
from .delivery import Table
from .diskroom import DiskRoom
from .files import BufferUnavailable, Corrupt, move_aside, open_store
from .quarantine import requeue_conn
from .sinks import SinkHandle, check_sink
from .space import Call
from .store import Store
from .writer import STOP, Put, WriterMixin

log = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = ["Buffer", "BufferClosed", "BufferConfig", "BufferUnavailable"]


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


class Buffer(WriterMixin):
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
        self._q.put(Put(tuple(records), fut))
        await fut

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the writer thread (the only thread touching SQLite)."""
        return await self.submit(fn)

    def submit(self, fn: Callable[[Store], T]) -> asyncio.Future[T]:
        """Queue ``fn(store)`` for the writer thread now (synchronously) and return its future.

        Once queued it runs even if the caller stops waiting (e.g. ``asyncio.shield`` it)."""
        fut: asyncio.Future[T] = self._check().create_future()
        self._q.put(Call(fn, fut))
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
        self._q.put(STOP)
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

    # -- open / corruption ----------------------------------------------------------------
    def _ready(self) -> Store | None:
        """Open the store on the writer thread and load what the buffer keeps in memory (free
        space awareness, last timestamps, drop counters, bytes used), then let ``start()``
        return; ``None`` (``start()`` raises) when the database cannot be opened."""
        try:
            store = self._open()
        except (sqlite3.Error, OSError, schema.SchemaTooNew) as exc:
            self._dead = exc
            self._resolve(self._opened, exc=exc)
            return None
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
        return store

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
