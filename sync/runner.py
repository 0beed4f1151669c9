"""The one delivery loop: drives any :class:`~.delivery.Sink` over its buffer handle.

:func:`run_sink` (or :class:`SinkRunner` for its state) takes the sink's next batch, awaits
``sink.deliver(batch)`` and settles the outcome in the buffer, oldest batch first, forever:

* ``Delivered`` → settled; the retry state is reset (only a delivered batch resets it).
* ``RetryAfter`` → settled (attempt recorded), then the loop waits with the agent's backoff
  (:class:`edge_agent.backoff.Retrier`): at least ``after`` (capped by ``retry_after_max``), or
  the slow interval for ``slow=True`` (credentials that may be rotated); the same batch goes
  again.
* ``Split`` / ``Rejected`` → settled (two new batches / quarantine), and on with the next.

While a batch is in flight on its first attempt, the next one is prepared (taken, and built
by ``sink.prepare`` if the sink has it): it is sent only once the current one is settled, and
dissolved by the buffer if the current one needed retries or was split. :meth:`SinkRunner.flush`
is the bounded variant for shutdown. State, counters, ``last_error`` and ``last_success`` feed
the metrics. A failing buffer (:class:`~edge_agent.errors.StorageError`) is retried with the
same backoff; it never ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.backoff import Backoff, Retrier
from edge_agent.errors import StorageError
from edge_agent.records import now

from .delivery import (
    Batch,
    Delivered,
    Outcome,
    PreparingSink,
    Rejected,
    RetryAfter,
    Sink,
    Split,
)
from .sinks import SinkHandle

__all__ = ["DeliveryPolicy", "SinkRunner", "run_sink"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryPolicy:
    """How one sink's loop takes batches and waits between attempts."""

    batch_max_rows: int = 5000
    batch_max_bytes: int = 4 * 1024**2
    backoff: Backoff = Backoff(initial=1.0, maximum=300.0, jitter=0.5)
    retry_after_max: float = 3600.0
    slow_interval: float = 300.0  # RetryAfter(slow=True): e.g. a revoked key
    interval: float = 1.0  # after the buffer ran dry, wait this long for a batch to fill up


class SinkRunner:
    """One sink's delivery loop and its state (for metrics and tests)."""

    def __init__(self, handle: SinkHandle, sink: Sink, policy: DeliveryPolicy) -> None:
        if handle.name != sink.name or not set(sink.tables) <= set(handle.tables):
            raise ValueError(f"sink {sink.name!r} does not match its handle {handle.name!r}")
        self.handle = handle
        self.sink = sink
        self.policy = policy
        self.retrier: Retrier = policy.backoff.retrier()
        self.state = "idle"
        self.outcomes: Counter[str] = Counter()  # delivered, retry_after, split, rejected
        self.delivered: Counter[str] = Counter()  # by Delivered.note: accepted, duplicate …
        self.retries: Counter[str] = Counter()  # by RetryAfter.kind
        self.rows_delivered = 0
        self.rows_rejected = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._progress = asyncio.Condition()

    # -- public ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver until cancelled; never raises on peer or network failures."""
        while True:
            try:
                async with self.handle.lock:
                    sent = await self._drain(deadline=None)
            except StorageError as exc:  # the buffer's disk: keep going, retry later
                self.state = "backoff"
                self.last_error = str(exc)
                wait = self.retrier.next_delay()
                log.warning("sink could not use the buffer; retrying", extra={
                    "sink": self.sink.name, "error": str(exc), "retry_in_s": round(wait, 3)})
                await asyncio.sleep(wait)
                continue
            if not sent:
                self.state = "idle"
                await self.handle.wait_for_data()
                if self.policy.interval:
                    await asyncio.sleep(self.policy.interval)  # let a batch fill up

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 (a deadline, not a wait)
        """Deliver what is buffered for at most ``timeout`` seconds (shutdown); True if the
        sink's backlog was emptied."""
        deadline = time.monotonic() + timeout
        done = False
        try:
            async with asyncio.timeout(timeout), self.handle.lock:
                done = await self._drain(deadline=deadline, until_empty=True)
        except (TimeoutError, StorageError) as exc:
            log.info("flush stopped with data left in the buffer",
                     extra={"sink": self.sink.name, "error": repr(exc)})
        return done

    async def close(self) -> None:
        """Close the sink (after :meth:`run` was cancelled and :meth:`flush` returned)."""
        await self.sink.close()

    async def wait_until(self, pred: Callable[[SinkRunner], bool], within: float) -> bool:
        """Wait until ``pred(self)`` holds (checked after every outcome)."""
        try:
            async with asyncio.timeout(within), self._progress:
                await self._progress.wait_for(lambda: pred(self))
        except TimeoutError:
            return False
        return True

    def stats(self) -> dict[str, object]:
        return {"state": self.state, "outcomes": dict(self.outcomes),
                "delivered": dict(self.delivered), "retries": dict(self.retries),
                "rows_delivered": self.rows_delivered, "rows_rejected": self.rows_rejected,
                "last_error": self.last_error, "last_success": self.last_success}

    # -- the loop -------------------------------------------------------------------------
    async def _take(self, after: Batch | None) -> Batch | None:
        p = self.policy
        batch = await self.handle.next_batch(p.batch_max_rows, p.batch_max_bytes, after)
        if batch is not None and isinstance(self.sink, PreparingSink):
            await self.sink.prepare(batch)
        return batch

    async def _drain(self, deadline: float | None, until_empty: bool = False) -> bool:
        """Deliver batches until the buffer has none for this sink. Returns whether anything
        was taken (``until_empty``: whether the backlog was emptied before ``deadline``)."""
        cur = await self._take(None)
        if cur is None:
            return True if until_empty else False
        nxt: asyncio.Task[Batch | None] | None = None
        try:
            while cur is not None:
                if self.state not in ("backoff", "auth_failed"):  # kept while retrying
                    self.state = "sending"
                if cur.attempts == 0:  # pipelining: prepare the next one meanwhile
                    nxt = asyncio.create_task(self._take(cur))
                outcome = await self.sink.deliver(cur)
                if not isinstance(outcome, Delivered) and nxt is not None:
                    # settle only once the prepared batch is committed, so that a split or a
                    # retry dissolves it (it was never sent)
                    await asyncio.wait([nxt])
                await self.handle.settle(cur, outcome)
                await self._count(cur, outcome)
                ahead: Batch | None = None
                if nxt is not None:
                    task, nxt = nxt, None
                    ahead = await task
                if isinstance(outcome, RetryAfter):
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                    await self._wait(cur, outcome, deadline)
                    cur = await self._take(None)
                elif isinstance(outcome, Split):
                    cur = await self._take(None)
                else:
                    cur = ahead if ahead is not None else await self._take(None)
        finally:
            if nxt is not None:  # whatever it took stays pending and is sent later, in order
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await nxt
        return True

    async def _count(self, batch: Batch, outcome: Outcome) -> None:
        extra = {"correlation_id": batch.key, "sink": self.sink.name, "rows": batch.n_rows}
        self.state = "sending"
        if isinstance(outcome, Delivered):
            self.outcomes["delivered"] += 1
            self.delivered[outcome.note] += 1
            self.rows_delivered += batch.n_rows
            self.retrier.reset()
            self.last_success = now()
            log.info("batch delivered", extra={**extra, "outcome": outcome.note})
        elif isinstance(outcome, RetryAfter):
            self.outcomes["retry_after"] += 1
            self.retries[outcome.kind] += 1
            self.last_error = f"{outcome.kind}: {outcome.detail}" if outcome.detail else \
                outcome.kind
            self.state = "auth_failed" if outcome.slow else "backoff"
        elif isinstance(outcome, Split):
            self.outcomes["split"] += 1
            log.info("batch split in two new batches", extra={**extra, "reason": outcome.reason})
        elif isinstance(outcome, Rejected):
            self.outcomes["rejected"] += 1
            self.rows_rejected += batch.n_rows
            self.last_error = f"rejected: {outcome.reason[:200]}"
        async with self._progress:
            self._progress.notify_all()

    async def _wait(self, batch: Batch, outcome: RetryAfter, deadline: float | None) -> None:
        p = self.policy
        if outcome.slow:
            wait = float(p.slow_interval)
        else:
            floor = min(outcome.after, p.retry_after_max) if outcome.after is not None else 0.0
            wait = self.retrier.next_delay(at_least=floor)
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        log.warning("delivery attempt failed; retrying", extra={
            "correlation_id": batch.key, "sink": self.sink.name, "kind": outcome.kind,
            "retry_in_s": round(wait, 3), "attempt": self.retrier.failures,
            "error": outcome.detail[:300]})
        await asyncio.sleep(wait)


async def run_sink(handle: SinkHandle, sink: Sink, policy: DeliveryPolicy) -> None:
    """Drive ``sink`` over ``handle`` until cancelled (see :class:`SinkRunner`)."""
    await SinkRunner(handle, sink, policy).run()
