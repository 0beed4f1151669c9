"""Uploader: sends buffered batches to the central ingest API, exactly once.

Per ``../shared/contracts/ingest-api.md``: a batch's key and exact membership are committed
(FULL) before its first send and reused on every retry, across restarts; a delivered answer
(accepted, duplicate_ignored, 409) releases the rows and marks the batch in one transaction;
413 splits into two new batches (new keys, recorded before sending); 400/422 quarantine; 401/403
are retried slowly with one event per episode; everything else is transient and retried with
exponential backoff, full jitter, ``Retry-After`` honoured, capped — never counted as delivered.
One batch is in flight at a time, so batches arrive oldest first (events before readings); the
next one is prepared (taken, built, gzipped) while the current one is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never
from tenacity.stop import stop_base
from tenacity.wait import wait_random_exponential

from edge_agent.records import Event, Severity, now

from .buffer import Buffer
from .contract import Outcome, Retry, UploaderConfig, classify
from .store import BatchRows, Store
from .wire import build_body, encode

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    batch: BatchRows
    body: bytes
    payload: bytes


_DELIVERED = ("accepted", "duplicate", "conflict")


class _stop_at(stop_base):
    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def _api_key(cfg: UploaderConfig) -> str:
    """The API key as sent: a UTF-8 BOM and surrounding whitespace stripped (editors add them to
    key files); it must be non-empty printable ASCII (an HTTP header), else :class:`Retry`
    ``auth`` — the message never contains the key itself."""
    try:
        key = cfg.api_key.reveal() if cfg.api_key is not None else ""
    except (LookupError, OSError, UnicodeDecodeError) as exc:
        raise Retry("auth", f"API key unavailable: {exc}") from None
    key = key.replace("\ufeff", "").strip()
    where = cfg.api_key.describe() if cfg.api_key is not None else "<unset>"
    if not key:
        raise Retry("auth", f"API key {where} is empty")
    if not (key.isascii() and key.isprintable()):
        raise Retry("auth", f"API key {where} contains non-ASCII or control characters "
                            f"({len(key)} characters); it must be printable ASCII")
    return key


class Uploader:
    def __init__(self, buffer: Buffer, cfg: UploaderConfig, gateway_id: str,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not gateway_id or len(gateway_id) > 96 or not all(
                33 <= ord(ch) < 127 for ch in gateway_id):
            raise ValueError("gateway_id must be 1..96 printable ASCII characters without spaces "
                             "(it is part of the Idempotency-Key)")
        self.buffer = buffer
        self.cfg = cfg
        self.gateway_id = gateway_id
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()
        self._bw_next = 0.0
        self._auth_episode = False
        self._backoff = wait_random_exponential(multiplier=cfg.backoff_initial,
                                                max=cfg.backoff_max, min=cfg.backoff_initial / 2)
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.rows_sent = 0
        self.bytes_sent = 0
        self.quarantined = 0
        self.state = "idle" if cfg.url else "disabled"
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._progress = asyncio.Condition()
        self._retried = False
        self._key: str | None = None  # the batch in flight: logs carry it as correlation_id

    # -- public ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Send batches until cancelled; never raises on network or receiver errors."""
        if self.cfg.url is None:
            log.info("uploader disabled (no [uploader].url): data stays buffered")
            await asyncio.Event().wait()
        delay = float(self.cfg.backoff_initial)
        try:
            while True:
                self.buffer.data_event.clear()
                try:
                    async with self._lock:
                        sent = await self._drain(deadline=None)
                    delay = float(self.cfg.backoff_initial)
                except sqlite3.Error as exc:  # the buffer's disk: keep going, retry later
                    self.last_error = f"buffer: {exc}"
                    log.warning("uploader could not read the buffer: %s", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.cfg.backoff_max)
                    continue
                if not sent:
                    self.state = "idle"
                    await self.buffer.data_event.wait()
                    if self.cfg.interval:
                        await asyncio.sleep(self.cfg.interval)  # let a batch fill up
        finally:
            await self._close_client()

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109 (interface fixed by lead)
        """At shutdown: send what is buffered for at most ``timeout`` seconds, then stop."""
        if self.cfg.url is None:
            return
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    await self._drain(deadline=deadline)
        except (TimeoutError, sqlite3.Error) as exc:
            log.info("flush stopped with data left in the buffer: %r", exc)
        finally:
            await self._close_client()

    async def wait_until(self, pred: Callable[[Uploader], bool], within: float) -> bool:
        """Wait until ``pred(self)`` holds (checked after every batch outcome or failure)."""
        try:
            async with asyncio.timeout(within), self._progress:
                await self._progress.wait_for(lambda: pred(self))
        except TimeoutError:
            return False
        return True

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    def stats(self) -> dict[str, object]:
        return {
            "state": self.state, "batches_sent": dict(self.sent),
            "batches_failed": dict(self.failed), "rows_sent": self.rows_sent,
            "bytes_sent": self.bytes_sent, "quarantined": self.quarantined,
            "last_error": self.last_error, "last_success": self.last_success,
        }

    # -- batches --------------------------------------------------------------------------
    async def _prepare(self, after: int | None) -> _Prepared | None:
        """Take the next batch (assigning it durably if new) and build its body."""
        cfg, gw = self.cfg, self.gateway_id

        def pick(s: Store) -> BatchRows | None:
            return s.next_batch(gw, cfg.batch_max_rows, cfg.batch_max_bytes, after)

        batch = await self.buffer.call(pick)
        if batch is None:
            return None

        def build() -> tuple[bytes, bytes]:
            body = build_body(batch, gw, time.time_ns() // 1000)
            return body, encode(body, cfg.gzip, cfg.gzip_level)

        body, payload = await asyncio.to_thread(build)
        return _Prepared(batch, body, payload)

    async def _drain(self, deadline: float | None) -> bool:
        """Send batches until the buffer is empty; False if there was nothing to send or the
        deadline (flush) was reached.

        Pipelined: while a batch is in flight, the next one is taken and its body built and
        compressed. Batches are still *sent* strictly one at a time, oldest first: the prepared
        one goes out only once the current one is settled. If the current one was split (413),
        or needed retries (the prepared one may be stale, e.g. events were raised meanwhile),
        the prepared batch — never sent, so its key was never used — is dissolved and the next
        batch taken afresh."""
        prep = await self._prepare(None)
        if prep is None:
            return False
        nxt: asyncio.Task[_Prepared | None] | None = None
        try:
            while prep is not None:
                self.state = "sending"
                bid = prep.batch.id
                self._key = prep.batch.key
                nxt = asyncio.create_task(self._prepare(bid))
                self._retried = False
                retrying = AsyncRetrying(
                    stop=stop_never if deadline is None else _stop_at(deadline),
                    wait=self._wait, retry=retry_if_exception_type(Retry), reraise=True,
                    before_sleep=self._before_sleep)
                try:
                    async for attempt in retrying:
                        with attempt:
                            outcome, status, text = await self._attempt(prep.batch, prep.payload)
                except Retry:
                    return False  # deadline reached (flush)
                self.state = "sending"
                await self._settle(prep.batch, outcome, prep.body, status, text)
                await self._notify()
                task, nxt = nxt, None
                ahead = await task
                if outcome == "split":  # the split dissolved what was prepared after it
                    prep = await self._prepare(None)
                elif self._retried and ahead is not None:
                    await self.buffer.call(functools.partial(Store.dissolve_after, bid=bid))
                    prep = await self._prepare(None)
                else:
                    prep = ahead
        finally:
            if nxt is not None:  # whatever it took stays pending and is sent later, in order
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, sqlite3.Error):
                    await nxt
        return True

    async def _attempt(self, batch: BatchRows, payload: bytes) -> tuple[Outcome, int, str]:
        cfg = self.cfg
        key = _api_key(cfg)
        headers = {"Content-Type": "application/json", "X-API-Key": key,
                   "Idempotency-Key": batch.key, "X-Request-ID": str(uuid.uuid4())}
        if cfg.gzip:
            headers["Content-Encoding"] = "gzip"
        await self._throttle(len(payload))
        client = self._get_client()
        try:
            resp = await client.post(cfg.endpoint, content=payload, headers=headers)
        except httpx.TimeoutException as exc:
            raise Retry("timeout", repr(exc)) from None
        except httpx.TransportError as exc:
            raise Retry("connection", repr(exc)) from None
        except httpx.HTTPError as exc:  # e.g. DecodingError: a garbage gzip/brotli answer body
            raise Retry("bad_body", repr(exc)) from None
        bid, status = batch.id, str(resp.status_code)
        try:  # classified before any await: nothing can come between the answer and its record
            outcome = classify(resp)
        except Retry:
            await self.buffer.call(lambda s: s.record_attempt(bid, status))
            raise
        text = resp.text[:4000]
        if outcome in _DELIVERED:
            await self._deliver(batch, outcome, status)
            if self._auth_episode:
                self._auth_episode = False
                await self._event("uploader_auth_recovered", "info", {})
        else:
            await self.buffer.call(lambda s: s.record_attempt(bid, status))
        return outcome, resp.status_code, text

    async def _deliver(self, batch: BatchRows, outcome: Outcome, status: str) -> None:
        """Record the attempt and mark the batch delivered as ONE writer job, queued at once and
        shielded: a flush deadline or a cancellation (shutdown) arriving now cannot leave an
        acknowledged batch pending (to be resent after a restart); the writer runs the job
        whatever happens to this task (before a later close() stops it)."""
        bid = batch.id

        def settle(s: Store) -> None:
            s.record_attempt(bid, status)
            s.mark_delivered(bid, outcome)

        fut = self.buffer.submit(settle)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            log.info("cancelled while settling delivered batch %s; the buffer still commits it",
                     batch.key, extra={"correlation_id": batch.key})
            raise

    async def _settle(self, batch: BatchRows, outcome: Outcome, body: bytes, status: int,
                      reason: str) -> None:
        bid, key, gw = batch.id, batch.key, self.gateway_id
        if outcome in _DELIVERED:  # already marked delivered by _attempt (see _deliver)
            self.sent[outcome] += 1
            self.rows_sent += batch.n_rows
            self.bytes_sent += len(body)
            self.last_success = now()
            log.info("batch delivered", extra={"correlation_id": key, "outcome": outcome,
                                               "rows": batch.n_rows, "bytes": len(body)})
            return
        if outcome == "split":
            self.failed["http_413"] += 1
            if await self.buffer.call(lambda s: s.split(bid, gw)):
                log.info("batch %s too large (413): split in two new batches", key,
                         extra={"correlation_id": key})
                return
            reason = f"413 for a single-row batch: {reason}"
        n = batch.n_rows
        text = body.decode()
        await self.buffer.call(lambda s: s.quarantine(bid, key, status, reason, text, n))
        self.quarantined += 1
        self.failed["quarantined"] += 1
        log.error("batch %s quarantined (%s): %s", key, status, reason[:200],
                  extra={"correlation_id": key})
        await self._event("batch_quarantined", "warning",
                          {"batch_key": key, "status": status, "rows": n, "reason": reason[:500]})

    # -- helpers --------------------------------------------------------------------------
    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.cfg.timeout, verify=self.cfg.verify_tls)
        return self._client

    async def _close_client(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome else None
        if isinstance(exc, Retry) and exc.kind == "auth":
            return float(self.cfg.auth_retry_interval)
        wait = float(self._backoff(rs))
        if isinstance(exc, Retry) and exc.retry_after is not None:
            # Retry-After: 0 or a past date must not mean "hammer it": never below the backoff
            ra = min(exc.retry_after, self.cfg.retry_after_max)
            wait = max(wait, ra + random.uniform(0, 0.1 * ra))
        return wait

    async def _before_sleep(self, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        kind = exc.kind if isinstance(exc, Retry) else "unexpected"
        self.failed[kind] += 1
        self.last_error = str(exc)
        self.state = "auth_failed" if kind == "auth" else "backoff"
        self._retried = True
        wait = rs.next_action.sleep if rs.next_action else 0.0
        log.warning("upload attempt %d failed (%s); retrying in %.1fs", rs.attempt_number, exc,
                    wait, extra={"correlation_id": self._key})
        await self._notify()
        if kind == "auth" and not self._auth_episode:
            self._auth_episode = True
            await self._event("uploader_auth_failed", "critical",
                              {"error": str(exc)[:300], "retry_interval_s":
                               float(self.cfg.auth_retry_interval)})

    async def _event(self, kind: str, severity: Severity, details: dict[str, Any]) -> None:
        ev = Event(kind=kind, source_id="uploader", timestamp=now(), severity=severity,
                   details=details)
        try:
            await self.buffer.put([ev])
        except sqlite3.Error as exc:
            log.warning("could not buffer event %s: %s", kind, exc)

    async def _throttle(self, nbytes: int) -> None:
        limit = self.cfg.bandwidth_limit
        if not limit:
            return
        t = time.monotonic()
        start = max(t, self._bw_next)
        self._bw_next = start + nbytes / limit
        if start > t:
            await asyncio.sleep(start - t)
