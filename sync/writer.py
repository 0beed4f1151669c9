"""The buffer's writer thread (a mixin of :class:`.Buffer`): its loop, group commit, and the
write that waits out a failing disk.

Everything here runs on the writer thread, the only thread touching SQLite. The loop takes jobs
off the buffer's queue: a :class:`Put` (records to commit; its future is the acknowledgement),
a :class:`.space.Call` (a function run on the store, e.g. a sink's delivery transaction) or
:data:`STOP`. Puts queued behind one another are committed in one transaction
(:meth:`WriterMixin._gather`). A write failing on the disk is retried with :data:`DISK_RETRY`
while the sinks' calls go on (:meth:`.space.SpaceMixin._wait_retry`). The buffer's own events
(disk error and recovery, quota drops, corruption) are written with the next commit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.backoff import Backoff
from edge_agent.errors import BufferClosed
from edge_agent.records import Event, Severity, now, weight

from .convert import BAD_RECORD, Converted, convert, event_body
from .space import Call, SpaceMixin
from .store import Store

log = logging.getLogger(__name__)

# Retrying a failing disk (full, I/O errors): the agent's one backoff policy.
DISK_RETRY = Backoff(initial=0.2, maximum=30.0)


@dataclass
class Put:
    """Records to commit (:meth:`.Buffer.put`); ``fut`` resolves once they are committed."""

    records: Sequence[object]
    fut: asyncio.Future[None]


STOP = object()
# A commit group linger (commit_interval) for more puts only while it holds fewer rows than this:
# small puts share one commit (one fsync at FULL), big ones are committed at once. Producers
# waiting for their ack cannot add to a group, so lingering then is pure idle time.
LINGER_BELOW = 1000


class WriterMixin(SpaceMixin):
    """The writer thread's loop and writes; :class:`.Buffer` opens the store (``_ready``)."""

    on_event: Callable[[Event], None] | None
    commits: int
    rows_committed: int
    _loop: asyncio.AbstractEventLoop | None
    _dead: BaseException | None
    _own_events: list[Event]

    def _ready(self) -> Store | None:
        raise NotImplementedError

    def wake(self, tables: Iterable[str] = ("events", "features", "readings")) -> None:
        raise NotImplementedError

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
                if isinstance(job, Put | Call):
                    self._resolve(job.fut, exc=BufferClosed(f"buffer writer failed: {exc!r}"))

    def _serve(self) -> None:
        store = self._ready()
        if store is None:
            return
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
            if job is STOP:
                break
            if isinstance(job, Call):
                self._call(store, job)
                continue
            assert isinstance(job, Put)
            group, carry = self._gather(job)
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

    def _gather(self, first: Put) -> tuple[list[Put], object | None]:
        """Group commit: ``first`` and the puts already queued behind it, up to ``commit_rows``
        rows (a reading block counts its rows: :func:`records.weight`); a group of fewer than
        ``LINGER_BELOW`` rows waits up to ``commit_interval`` for more. Returns the group and
        the job that ended it when that is not a put (a call or the stop, to run next), else
        ``None``."""
        group, n = [first], sum(map(weight, first.records))
        deadline = time.monotonic() + self.cfg.commit_interval
        while n < self.cfg.commit_rows:
            try:
                nxt = self._next(None)  # everything already queued joins the group
            except queue.Empty:
                if n >= LINGER_BELOW:  # big enough: lingering would only add latency
                    break
                try:
                    nxt = self._next(max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if not isinstance(nxt, Put):
                return group, nxt
            group.append(nxt)
            n += sum(map(weight, nxt.records))
        return group, None

    def _commit(self, store: Store, group: list[Put]) -> None:
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
