"""A sink's side of the buffer: :class:`SinkHandle`, the delivery transactions of one named sink.

``buffer.sink(name, tables)`` registers a sink and returns its handle. Through it the sink gets
its batches and settles each with one outcome (:mod:`.delivery`); it never sees SQLite. All
bookkeeping runs on the buffer's writer thread and commits at FULL strength:

* :meth:`SinkHandle.next_batch` — the sink's oldest pending batch, resent as is (same key, same
  members), else a new one whose key and exact membership are committed before it is returned.
A failing buffer (full or failing disk) raises :class:`~edge_agent.errors.StorageError` from
these methods; nothing is settled then, and the batch is offered again later.

* :meth:`SinkHandle.settle` — ``Delivered``: marked delivered (one job, shielded from
  cancellation, with the attempt record), rows nobody else needs are freed; ``RetryAfter``: the
  attempt is recorded and batches prepared after it are dissolved; ``Split``: two new batches
  with new keys replace it (a batch of one row cannot be split: it is quarantined);
  ``Rejected``: quarantined with the reason, a ``batch_quarantined`` event is raised.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from edge_agent.errors import StorageError
from edge_agent.records import Event, now

from .delivery import Batch, Delivered, Outcome, Rejected, RetryAfter, Split
from .storebase import TABLES
from .wire import build_body

if TYPE_CHECKING:
    from .buffer import Buffer
    from .store import Store

T = TypeVar("T")

__all__ = ["SinkHandle", "check_sink"]
log = logging.getLogger(__name__)


def check_sink(name: str, tables: frozenset[str], key_prefix: str) -> None:
    if not tables or not tables <= set(TABLES):
        raise ValueError(f"sink {name!r}: tables must be a non-empty subset of {TABLES}")
    for what, text in (("name", name), ("key_prefix", key_prefix)):
        if not text or len(text) > 96 or not all(33 <= ord(ch) < 127 for ch in text):
            raise ValueError(f"sink {what} must be 1..96 printable ASCII characters without "
                             f"spaces (it is part of the Idempotency-Key), got {text!r}")


class SinkHandle:
    """The delivery transactions of one named sink over the buffer."""

    def __init__(self, buffer: Buffer, name: str, tables: frozenset[str],
                 key_prefix: str) -> None:
        self.buffer = buffer
        self.name = name
        self.tables = tables
        self.key_prefix = key_prefix
        self.registered: asyncio.Future[None] | None = None
        self.data = asyncio.Event()  # set by the buffer when rows of our tables are committed
        self.data.set()
        self.lock = asyncio.Lock()  # one delivery loop per sink at a time
        self.settled: Counter[str] = Counter()  # delivered, split, rejected, retry
        self.rows_delivered = 0
        self.rows_rejected = 0

    async def _call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn`` on the buffer's writer; SQLite failures (a full or failing disk) come
        back as :class:`~edge_agent.errors.StorageError`."""
        try:
            return await self.buffer.call(fn)
        except sqlite3.Error as exc:
            raise StorageError(f"buffer: {exc}") from exc

    async def _ready(self) -> None:
        if self.registered is None:
            raise RuntimeError(f"sink {self.name!r}: the buffer is not started")
        await asyncio.shield(self.registered)

    async def next_batch(self, max_rows: int, max_bytes: int,
                         after: Batch | None = None) -> Batch | None:
        """The oldest pending batch of this sink (resent as is), else a new one committed
        before it is returned; ``None`` when there is nothing to send. ``after``: the batch in
        flight — a batch prepared meanwhile comes after it and is sent only once it is
        settled."""
        await self._ready()
        name, prefix, bid = self.name, self.key_prefix, None if after is None else after.id
        return await self._call(
            lambda s: s.next_batch(name, prefix, max_rows, max_bytes, bid))

    async def settle(self, batch: Batch, outcome: Outcome) -> None:
        """Apply the sink's outcome for ``batch`` durably (see the module docstring)."""
        if batch.sink != self.name:
            raise ValueError(f"batch {batch.key} belongs to sink {batch.sink!r}, not {self.name!r}")
        bid = batch.id
        if isinstance(outcome, Delivered):
            status = outcome.status or outcome.note
            # Queued now, shielded: a cancellation (shutdown, flush deadline) arriving while the
            # writer is busy cannot leave an acknowledged batch pending to be resent.
            fut = self.buffer.submit(lambda s: s.delivered(bid, status))
            try:
                await asyncio.shield(fut)
            except sqlite3.Error as exc:  # left pending: resent later, same key (duplicate)
                raise StorageError(f"buffer: {exc}") from exc
            except asyncio.CancelledError:
                log.info("cancelled while settling a delivered batch; the buffer still commits "
                         "it", extra={"correlation_id": batch.key, "sink": self.name})
                raise
            self.settled["delivered"] += 1
            self.rows_delivered += batch.n_rows
        elif isinstance(outcome, RetryAfter):
            status = outcome.status or outcome.kind
            await self._call(lambda s: s.retry(self.name, bid, status))
            self.settled["retry"] += 1
        elif isinstance(outcome, Split):
            name, prefix, status = self.name, self.key_prefix, outcome.status or "split"
            if await self._call(lambda s: s.split(name, bid, prefix, status)):
                self.settled["split"] += 1
                return
            await self._reject(batch, Rejected(
                f"cannot split a batch of one row: {outcome.reason}", outcome.status))
        else:
            await self._reject(batch, outcome)

    async def _reject(self, batch: Batch, outcome: Rejected) -> None:
        bid, key, n = batch.id, batch.key, batch.n_rows
        body = outcome.body_hint or build_body(batch, self.key_prefix,
                                               time.time_ns() // 1000).decode()
        status, reason = outcome.status, outcome.reason
        await self._call(lambda s: s.quarantine(bid, key, status, reason, body, n))
        self.settled["rejected"] += 1
        self.rows_rejected += n
        log.error("batch quarantined", extra={"correlation_id": key, "sink": self.name,
                                              "status": status, "reason": reason[:200]})
        details: dict[str, Any] = {"batch_key": key, "sink": self.name, "rows": n,
                                   "status": int(status) if status.isdigit() else status,
                                   "reason": reason[:500]}
        try:
            await self.buffer.put([Event("batch_quarantined", self.name, now(), "warning",
                                         details)])
        except sqlite3.Error as exc:
            raise StorageError(f"buffer: {exc}") from exc

    async def wait_for_data(self) -> None:
        """Return once rows of this sink's tables were committed since the last call (at
        once the first time)."""
        await self.data.wait()
        self.data.clear()

    def stats(self) -> dict[str, object]:
        return {"tables": sorted(self.tables), "batches_settled": dict(self.settled),
                "rows_delivered": self.rows_delivered, "rows_rejected": self.rows_rejected}
