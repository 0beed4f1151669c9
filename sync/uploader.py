"""The HTTP uploader: a :class:`~.delivery.Sink` that POSTs batches to the central ingest API.

Per ``../shared/contracts/ingest-api.md``. :class:`HttpSink` builds a batch's body, sends it
with the batch's ``Idempotency-Key`` and turns the answer into one outcome
(:func:`.contract.classify`); transport failures are ``RetryAfter`` values, never exceptions.
It does not see the buffer: keys, membership, retries, splits and quarantine are the buffer's
delivery transactions (:mod:`.sinks`), driven by the generic loop (:mod:`.runner`). 401/403 and
an unusable key are retried slowly, with one ``uploader_auth_failed`` event per episode; the
key is read again on every attempt, so a rotated ``api_key_file`` works without a restart.

:class:`Uploader` wires it up for the agent: registers the sink ``uploader`` on the buffer
(all tables, keys ``<gateway_id>:<db epoch>:<batch id>``) and runs the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from edge_agent.backoff import Backoff
from edge_agent.records import Event, Severity, now

from .buffer import Buffer
from .contract import UploaderConfig, classify
from .delivery import Batch, Outcome, Rejected, RetryAfter, Split, Table
from .runner import DeliveryPolicy, SinkRunner
from .wire import build_body, encode

__all__ = ["HttpSink", "Uploader", "UploaderConfig"]
log = logging.getLogger(__name__)
SINK = "uploader"
TABLES: frozenset[Table] = frozenset(("events", "features", "readings"))
Emit = Callable[[Event], Awaitable[None]]


def check_gateway_id(gateway_id: str) -> None:
    if not gateway_id or len(gateway_id) > 96 or not all(
            33 <= ord(ch) < 127 for ch in gateway_id):
        raise ValueError("gateway_id must be 1..96 printable ASCII characters without spaces "
                         "(it is part of the Idempotency-Key)")


def api_key(cfg: UploaderConfig) -> str | RetryAfter:
    """The API key as sent: a UTF-8 BOM and surrounding whitespace stripped (editors add them to
    key files); it must be non-empty printable ASCII (an HTTP header), else an ``auth``
    :class:`RetryAfter` — whose message never contains the key itself."""
    try:
        key = cfg.api_key.reveal() if cfg.api_key is not None else ""
    except (LookupError, OSError, UnicodeDecodeError) as exc:
        return RetryAfter("auth", f"API key unavailable: {exc}", slow=True)
    key = key.replace("\ufeff", "").strip()
    where = cfg.api_key.describe() if cfg.api_key is not None else "<unset>"
    if not key:
        return RetryAfter("auth", f"API key {where} is empty", slow=True)
    if not (key.isascii() and key.isprintable()):
        return RetryAfter("auth", f"API key {where} contains non-ASCII or control characters "
                                  f"({len(key)} characters); it must be printable ASCII",
                          slow=True)
    return key


class HttpSink:
    """POST one batch, classify the answer. Implements :class:`~.delivery.PreparingSink`."""

    def __init__(self, cfg: UploaderConfig, gateway_id: str,
                 transport: httpx.AsyncBaseTransport | None = None,
                 emit: Emit | None = None, name: str = SINK,
                 tables: frozenset[Table] = TABLES) -> None:
        check_gateway_id(gateway_id)
        self.name = name
        self.tables = tables
        self.cfg = cfg
        self.gateway_id = gateway_id
        self._transport = transport
        self._emit = emit
        self._client: httpx.AsyncClient | None = None
        self._bw_next = 0.0
        self._auth_episode = False
        self._bodies: dict[int, tuple[bytes, bytes]] = {}  # batch id -> (JSON, payload)
        self.failed: Counter[str] = Counter()  # by kind: timeout, http_5xx, http_413 …
        self.bytes_sent = 0

    async def prepare(self, batch: Batch) -> None:
        """Build and compress the body (off the event loop) ahead of :meth:`deliver`."""
        cfg, gw = self.cfg, self.gateway_id

        def build() -> tuple[bytes, bytes]:
            body = build_body(batch, gw, time.time_ns() // 1000)
            return body, encode(body, cfg.gzip, cfg.gzip_level)

        self._bodies[batch.id] = await asyncio.to_thread(build)
        while len(self._bodies) > 2:  # prepared, then dissolved by the buffer: never sent
            del self._bodies[min(self._bodies)]

    async def deliver(self, batch: Batch) -> Outcome:
        if batch.id not in self._bodies:
            await self.prepare(batch)
        body, payload = self._bodies.pop(batch.id)
        outcome = await self._post(batch, payload)
        if isinstance(outcome, RetryAfter):
            self.failed[outcome.kind] += 1
            if outcome.kind == "auth":
                await self._auth_failed(outcome)
        elif isinstance(outcome, Split):
            self.failed[f"http_{outcome.status}"] += 1
        elif isinstance(outcome, Rejected):
            self.failed["quarantined"] += 1
            outcome = Rejected(outcome.reason, outcome.status, body_hint=body.decode())
        else:
            self.bytes_sent += len(body)
            if self._auth_episode:
                self._auth_episode = False
                await self._event("uploader_auth_recovered", "info", {})
        return outcome

    async def _post(self, batch: Batch, payload: bytes) -> Outcome:
        cfg = self.cfg
        key = api_key(cfg)
        if isinstance(key, RetryAfter):
            return key
        headers = {"Content-Type": "application/json", "X-API-Key": key,
                   "Idempotency-Key": batch.key, "X-Request-ID": str(uuid.uuid4())}
        if cfg.gzip:
            headers["Content-Encoding"] = "gzip"
        await self._throttle(len(payload))
        try:
            resp = await self._get_client().post(cfg.endpoint, content=payload, headers=headers)
        except httpx.TimeoutException as exc:
            return RetryAfter("timeout", repr(exc))
        except httpx.TransportError as exc:
            return RetryAfter("connection", repr(exc))
        except httpx.HTTPError as exc:  # e.g. DecodingError: a garbage gzip/brotli answer body
            return RetryAfter("bad_body", repr(exc))
        return classify(resp, batch.n_rows)

    async def _auth_failed(self, outcome: RetryAfter) -> None:
        if self._auth_episode:
            return
        self._auth_episode = True
        await self._event("uploader_auth_failed", "critical", {
            "error": f"{outcome.kind}: {outcome.detail}"[:300],
            "retry_interval_s": float(self.cfg.auth_retry_interval)})

    async def _event(self, kind: str, severity: Severity, details: dict[str, Any]) -> None:
        if self._emit is not None:
            await self._emit(Event(kind=kind, source_id=self.name, timestamp=now(),
                                   severity=severity, details=details))

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=self.cfg.timeout, verify=self.cfg.verify_tls)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _throttle(self, nbytes: int) -> None:
        limit = self.cfg.bandwidth_limit
        if not limit:
            return
        t = time.monotonic()
        start = max(t, self._bw_next)
        self._bw_next = start + nbytes / limit
        if start > t:
            await asyncio.sleep(start - t)


def policy(cfg: UploaderConfig) -> DeliveryPolicy:
    return DeliveryPolicy(
        batch_max_rows=cfg.batch_max_rows, batch_max_bytes=int(cfg.batch_max_bytes),
        backoff=Backoff(initial=float(cfg.backoff_initial), maximum=float(cfg.backoff_max),
                        jitter=0.5),
        retry_after_max=float(cfg.retry_after_max),
        slow_interval=float(cfg.auth_retry_interval), interval=float(cfg.interval))


class Uploader:
    """The agent's uploader: :class:`HttpSink` driven over the buffer's sink ``uploader``."""

    def __init__(self, buffer: Buffer, cfg: UploaderConfig, gateway_id: str,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        check_gateway_id(gateway_id)
        self.cfg = cfg
        self.sink = HttpSink(cfg, gateway_id, transport, emit=self._put_event)
        self.buffer = buffer
        self.runner: SinkRunner | None = None
        if cfg.url is not None:  # disabled: not a consumer, the rows stay for the others
            handle = buffer.sink(SINK, TABLES, key_prefix=gateway_id)
            self.runner = SinkRunner(handle, self.sink, policy(cfg))

    async def _put_event(self, ev: Event) -> None:
        await self.buffer.put([ev])

    async def run(self) -> None:
        """Send batches until cancelled; never raises on network or receiver errors."""
        if self.runner is None:
            log.info("uploader disabled (no [uploader].url)")
            await asyncio.Event().wait()
            return
        try:
            await self.runner.run()
        finally:
            await self.sink.close()

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109 (a deadline, not a wait)
        """At shutdown: send what is buffered for at most ``timeout`` seconds, then stop."""
        if self.runner is None:
            return
        try:
            await self.runner.flush(timeout)
        finally:
            await self.sink.close()

    async def wait_until(self, pred: Callable[[Uploader], bool], within: float) -> bool:
        """Wait until ``pred(self)`` holds (checked after every batch outcome)."""
        if self.runner is None:
            return pred(self)
        return await self.runner.wait_until(lambda _: pred(self), within)

    # -- counters (the runner's, after each settle; the sink's, per attempt) ---------------
    @property
    def sent(self) -> Counter[str]:
        return self.runner.delivered if self.runner else Counter()

    @property
    def failed(self) -> Counter[str]:
        return self.sink.failed

    @property
    def rows_sent(self) -> int:
        return self.runner.rows_delivered if self.runner else 0

    @property
    def bytes_sent(self) -> int:
        return self.sink.bytes_sent

    @property
    def quarantined(self) -> int:
        return self.runner.outcomes["rejected"] if self.runner else 0

    @property
    def last_error(self) -> str | None:
        return self.runner.last_error if self.runner else None

    def stats(self) -> dict[str, object]:
        r = self.runner
        return {
            "state": r.state if r else "disabled", "batches_sent": dict(self.sent),
            "batches_failed": dict(self.failed), "rows_sent": self.rows_sent,
            "rows_already_present": self.sent["conflict"], "bytes_sent": self.sink.bytes_sent,
            "quarantined": self.quarantined, "last_error": self.last_error,
            "last_success": r.last_success if r else None,
        }
