"""A loopback ingest receiver that follows ``../shared/contracts/ingest-api.md``, with faults.

Usage in tests::

    with IngestReceiver(api_key="k") as rx:          # real HTTP server on 127.0.0.1, own thread
        rx.inject(status=503, retry_after=1)          # next request gets 503 + Retry-After
        rx.inject(store_then_drop=True)               # next request is stored, answer lost
        ... point the uploader at rx.url ...
        rx.wait_for(lambda r: len(r.readings) >= 100, timeout=10)
        rx.readings[("2026-11-27T10:15:01.000000Z", "press-07.oil_temp")]

It implements the contract as the real backend does: ``X-API-Key`` (401; 403 for a revoked key),
``Idempotency-Key`` validation and its own idempotency store (``duplicate_ignored`` with the
original ``event_id``; optional TTL), 409 when a row's primary key ``(timestamp, sensor_id)``
already exists (nothing of that batch is stored), 422 for an invalid body (non-finite value, bad
timestamp, missing fields), 400 for undecodable JSON/gzip, optional 413 limits (bytes on the wire
or rows), gzip request bodies, ``X-Request-ID`` echo. ``down()``/``up()`` simulate an outage on
the same port; the stored state survives.

Standalone (for subprocess use)::

    python -m tests.receiver --port 8765 --api-key K [--max-rows N] [--max-body-bytes N]

prints ``READY <url>`` and serves until killed; ``GET /_admin/stats`` returns the counters and
``GET /_admin/readings`` the stored keys; ``POST /_admin/inject`` takes a JSON fault.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # optional (speed only): the standard parser gives the same answers
    _orjson = None  # type: ignore[assignment]

INGEST_PATH = "/api/v1/data/ingest"
TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
SEVERITIES = ("info", "warning", "critical")


@dataclass
class Fault:
    """What the next request gets instead of (or beside) the normal answer."""

    status: int | None = None          # answer this status without processing
    body: str | bytes | None = None     # body for ``status`` (JSON error by default)
    content_type: str = "application/json"
    delay: float = 0.0                  # seconds to wait before answering (slow receiver)
    reset: bool = False                 # drop the connection without answering (not stored)
    store_then_drop: bool = False       # process and store, then drop the answer
    retry_after: float | str | None = None
    headers: dict[str, str] | None = None  # extra answer headers (e.g. a lying Content-Encoding)


@dataclass
class RequestLog:
    time: float
    status: int | None                  # None: connection dropped
    outcome: str
    idempotency_key: str | None
    request_id: str | None
    gateway_id: str | None = None
    batch_seq: int | None = None
    n_readings: int = 0
    n_features: int = 0
    n_events: int = 0
    first_reading: tuple[str, str] | None = None
    wire_bytes: int = 0

    @property
    def seq(self) -> int:
        """`batch_seq` of a request that carried one (checked)."""
        assert self.batch_seq is not None, self
        return self.batch_seq

    @property
    def first(self) -> tuple[str, str]:
        """`first_reading` of a request that carried readings (checked)."""
        assert self.first_reading is not None, self
        return self.first_reading


class _Invalid(Exception):
    def __init__(self, status: int, detail: object) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


def _reject_constant(name: str) -> float:
    raise _Invalid(422, f"non-finite number {name} in body")


def parse(raw: bytes) -> Any:
    """``json.loads`` with NaN/Infinity refused (422). orjson, when installed, parses strict
    RFC 8259 JSON only; anything it refuses goes to the standard parser, which gives the exact
    answer (400 or 422), so both paths accept and refuse the same bodies. orjson turns integers
    beyond 64 bits into floats; the only check that tells an integer from a float is
    ``batch_seq``'s, so a float there takes the standard parser too."""
    if _orjson is not None:
        try:
            doc = _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass
        else:
            if not (type(doc) is dict and type(doc.get("batch_seq")) is float):
                return doc
    return json.loads(raw, parse_constant=_reject_constant)


def _num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _ts(v: object) -> bool:
    return isinstance(v, str) and TS_RE.match(v) is not None


def _str(v: object, empty: bool = False) -> bool:
    return isinstance(v, str) and (empty or bool(v))


def _reading_errors(i: int, r: object) -> list[str]:
    if not isinstance(r, dict):
        return [f"readings[{i}]: must be an object"]
    errs = []
    if not (_str(r.get("sensor_id")) and _str(r.get("sensor_type"), True)
            and _str(r.get("unit"), True)):
        errs.append(f"readings[{i}]: sensor_id, sensor_type, unit are required strings")
    if not _ts(r.get("timestamp")):
        errs.append(f"readings[{i}].timestamp: bad format {r.get('timestamp')!r}")
    q, v = r.get("quality"), r.get("value", "missing")
    if not (_num(q) and 0.0 <= q <= 1.0):  # type: ignore[operator]
        errs.append(f"readings[{i}].quality: must be a number in 0..1")
    if v is None:
        if q != 0:
            errs.append(f"readings[{i}]: a null value requires quality 0")
    elif not _num(v):
        errs.append(f"readings[{i}].value: must be a finite number or null")
    if not isinstance(r.get("metadata", {}), dict):
        errs.append(f"readings[{i}].metadata: must be an object")
    return errs


def _readings_ok(readings: list[Any]) -> bool:
    """True only if :func:`_reading_errors` finds nothing in any reading (a stricter, faster
    check: the usual keys, exact JSON types; anything unusual goes to the full check)."""
    match = TS_RE.match
    for r in readings:
        if type(r) is not dict:
            return False
        n = len(r)
        if n == 7:  # the six keys below and metadata
            if type(r.get("metadata")) is not dict:
                return False
        elif n != 6:
            return False
        try:
            sid, ts, q, v = r["sensor_id"], r["timestamp"], r["quality"], r["value"]
            st, unit = r["sensor_type"], r["unit"]
        except KeyError:
            return False
        if (type(sid) is not str or not sid or type(st) is not str or type(unit) is not str
                or type(ts) is not str or match(ts) is None):
            return False
        if type(q) is float or type(q) is int:
            if not 0 <= q <= 1:  # NaN fails too
                return False
        else:
            return False
        if v is None:
            if q != 0:
                return False
        elif type(v) is float:
            if v - v != 0.0:  # NaN, Inf
                return False
        elif type(v) is not int:
            return False
    return True


def validate(doc: object) -> list[str]:
    """Problems with an ingest body (empty list: valid)."""
    if not isinstance(doc, dict):
        return ["body must be a JSON object"]
    errs: list[str] = []
    if not _str(doc.get("gateway_id")):
        errs.append("gateway_id: required string")
    if not (isinstance(doc.get("batch_seq"), int) and not isinstance(doc.get("batch_seq"), bool)):
        errs.append("batch_seq: required integer")
    if not _ts(doc.get("sent_at")):
        errs.append("sent_at: required RFC 3339 UTC timestamp with microseconds")
    lists = {}
    for name in ("readings", "features", "events"):
        v = doc.get(name, [])
        if not isinstance(v, list):
            errs.append(f"{name}: must be a list")
            v = []
        lists[name] = v
    if not any(lists.values()):
        errs.append("at least one of readings, features, events must be non-empty")
    if not _readings_ok(lists["readings"]):  # fast check; the full one names the problems
        for i, r in enumerate(lists["readings"]):
            errs += _reading_errors(i, r)
    for i, f in enumerate(lists["features"]):
        if not (isinstance(f, dict) and _str(f.get("source_id")) and _ts(f.get("window_start"))
                and _ts(f.get("window_end")) and isinstance(f.get("values"), dict)):
            errs.append(f"features[{i}]: source_id, window_start, window_end, values required")
            continue
        if not all(isinstance(k, str) and (x is None or _num(x)) for k, x in f["values"].items()):
            errs.append(f"features[{i}].values: finite numbers or null only")
        m = f.get("model")
        if m is not None and not (isinstance(m, dict) and _str(m.get("name"))
                                  and _str(m.get("version"))):
            errs.append(f"features[{i}].model: name and version required")
        if f.get("score") is not None and not _num(f.get("score")):
            errs.append(f"features[{i}].score: finite number or null")
        if f.get("is_anomaly") is not None and not isinstance(f.get("is_anomaly"), bool):
            errs.append(f"features[{i}].is_anomaly: boolean or null")
    for i, e in enumerate(lists["events"]):
        if not (isinstance(e, dict) and _str(e.get("event_id")) and _str(e.get("kind"))
                and _str(e.get("source_id"), True) and _ts(e.get("timestamp"))
                and e.get("severity") in SEVERITIES and isinstance(e.get("details", {}), dict)):
            errs.append(f"events[{i}]: event_id, kind, source_id, timestamp, severity required")
    return errs[:50]


class IngestReceiver:
    """The contract's ingest endpoint on 127.0.0.1 in a background thread."""

    def __init__(self, api_key: str = "test-key", port: int = 0, host: str = "127.0.0.1", *,
                 max_body_bytes: int | None = None, max_rows: int | None = None,
                 idempotency_ttl: float | None = None, revoked_keys: Iterable[str] = (),
                 keep_bodies: bool = True) -> None:
        self.api_key = api_key
        self.host, self.port = host, port
        self.max_body_bytes, self.max_rows = max_body_bytes, max_rows
        self.idempotency_ttl = idempotency_ttl
        self.revoked_keys = set(revoked_keys)
        self.keep_bodies = keep_bodies
        self.readings: dict[tuple[str, str], dict[str, Any]] = {}
        self.features: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.idempotency: dict[str, tuple[str, float]] = {}
        self.batches: list[str] = []            # keys of stored batches, in arrival order
        self.requests: list[RequestLog] = []
        self.duplicates = 0                      # duplicate_ignored answers
        self.conflicts = 0                       # 409 answers
        self.rows_stored = 0                     # rows stored, all kinds (no row twice)
        self.faults: deque[Fault] = deque()
        self.errors: list[str] = []               # unexpected exceptions in the handler
        self.cond = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def up(self) -> IngestReceiver:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ingest-receiver", daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening (an outage); stored state and the port number are kept."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    start, stop = up, down

    def __enter__(self) -> IngestReceiver:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def inject(self, status: int | None = None, body: str | bytes | None = None, *,
               delay: float = 0.0, reset: bool = False, store_then_drop: bool = False,
               retry_after: float | str | None = None, content_type: str = "application/json",
               headers: dict[str, str] | None = None, times: int = 1) -> None:
        """Queue a fault for the next ``times`` ingest requests."""
        with self.cond:
            for _ in range(times):
                self.faults.append(Fault(status, body, content_type, delay, reset,
                                         store_then_drop, retry_after, headers))

    def wait_for(self, pred: Callable[[IngestReceiver], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self), timeout)

    def stats(self) -> dict[str, int]:
        with self.cond:
            return {"readings": len(self.readings), "features": len(self.features),
                    "events": len(self.events), "duplicates": self.duplicates,
                    "conflicts": self.conflicts, "rows_stored": self.rows_stored,
                    "requests": len(self.requests), "batches": len(self.batches)}

    # -- the endpoint ---------------------------------------------------------------------
    def handle(self, headers: Any, raw: bytes) -> tuple[int, dict[str, Any], RequestLog]:
        """Process one ingest request (thread-safe); returns status, JSON answer, log entry."""
        log = RequestLog(time.time(), None, "", headers.get("Idempotency-Key"),
                         headers.get("X-Request-ID"), wire_bytes=len(raw))
        try:
            status, answer = self._handle(headers, raw, log)
        except _Invalid as exc:
            status, answer = exc.status, {"detail": exc.detail}
        log.status = status
        log.outcome = log.outcome or answer.get("status", str(status))
        return status, answer, log

    def _handle(self, headers: Any, raw: bytes, log: RequestLog) -> tuple[int, dict[str, Any]]:
        if self.max_body_bytes is not None and len(raw) > self.max_body_bytes:
            raise _Invalid(413, f"body of {len(raw)} bytes exceeds {self.max_body_bytes}")
        key_given = headers.get("X-API-Key")
        if key_given is not None and key_given in self.revoked_keys:
            raise _Invalid(403, "API key revoked")
        if key_given != self.api_key:
            raise _Invalid(401, "invalid or missing API key")
        ikey = headers.get("Idempotency-Key")
        if not ikey or len(ikey) > 128 or not all(32 <= ord(c) < 127 for c in ikey):
            raise _Invalid(400, "Idempotency-Key: required, <= 128 printable ASCII characters")
        if (headers.get("Content-Encoding") or "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as exc:
                raise _Invalid(400, f"bad gzip body: {exc}") from None
        with self.cond:
            seen = self.idempotency.get(ikey)
            if seen is not None and (self.idempotency_ttl is None
                                     or time.monotonic() - seen[1] < self.idempotency_ttl):
                self.duplicates += 1
                return 200, {"status": "duplicate_ignored", "event_id": seen[0]}
        try:
            doc = parse(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, _Invalid):
                raise
            raise _Invalid(400, f"invalid JSON: {exc}") from None
        errs = validate(doc)
        if errs:
            raise _Invalid(422, errs)
        readings, feats, events = (doc.get("readings") or [], doc.get("features") or [],
                                   doc.get("events") or [])
        log.gateway_id, log.batch_seq = doc["gateway_id"], doc["batch_seq"]
        log.n_readings, log.n_features, log.n_events = len(readings), len(feats), len(events)
        if readings:
            log.first_reading = (readings[0]["timestamp"], readings[0]["sensor_id"])
        n = len(readings) + len(feats) + len(events)
        if self.max_rows is not None and n > self.max_rows:
            raise _Invalid(413, f"{n} rows exceed {self.max_rows}")
        rkeys = [(r["timestamp"], r["sensor_id"]) for r in readings]
        fkeys = [(f["source_id"], f["window_start"], (f.get("model") or {}).get("name", ""))
                 for f in feats]
        ekeys = [e["event_id"] for e in events]
        with self.cond:
            seen = self.idempotency.get(ikey)  # a twin request may have raced us
            if seen is not None and (self.idempotency_ttl is None
                                     or time.monotonic() - seen[1] < self.idempotency_ttl):
                self.duplicates += 1
                return 200, {"status": "duplicate_ignored", "event_id": seen[0]}
            if (len(set(rkeys)) < len(rkeys) or len(set(fkeys)) < len(fkeys)
                    or len(set(ekeys)) < len(ekeys) or any(k in self.readings for k in rkeys)
                    or any(k in self.features for k in fkeys)
                    or any(k in self.events for k in ekeys)):
                self.conflicts += 1
                log.outcome = "conflict"
                return 409, {"detail": "duplicate primary key (timestamp, sensor_id)"}
            keep = self.keep_bodies
            self.readings.update(zip(rkeys, readings if keep else [{}] * len(rkeys),
                                     strict=True))
            self.features.update(zip(fkeys, feats, strict=True))
            self.events.update(zip(ekeys, events, strict=True))
            self.rows_stored += n
            event_id = uuid.uuid4().hex
            self.idempotency[ikey] = (event_id, time.monotonic())
            self.batches.append(ikey)
        return 200, {"status": "accepted", "event_id": event_id, "accepted": n}

    def record(self, log: RequestLog) -> None:
        with self.cond:
            self.requests.append(log)
            self.cond.notify_all()

    def next_fault(self) -> Fault | None:
        with self.cond:
            return self.faults.popleft() if self.faults else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: IngestReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # clients going away mid-answer (cancelled uploads, killed agents): expected
        self.receiver.errors.append(repr(exc))  # a receiver bug: tests assert there are none
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as production servers (uvicorn) set it: without it, the answer's headers and
    # body (two writes) meet the client's delayed ACK and every request stalls ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def rx(self) -> IngestReceiver:
        return self.server.receiver

    def _send(self, status: int, body: bytes, ctype: str = "application/json",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        rid = self.headers.get("X-Request-ID")
        if rid:
            self.send_header("X-Request-ID", rid)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        """Close the connection abruptly (RST), without an answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:
        rx = self.rx
        if self.path == "/_admin/stats":
            self._send(200, json.dumps(rx.stats()).encode())
        elif self.path == "/_admin/readings":
            with rx.cond:
                keys = list(rx.readings)
            self._send(200, json.dumps(keys).encode())
        else:
            self._send(404, b'{"detail":"not found"}')

    def do_POST(self) -> None:
        rx = self.rx
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path == "/_admin/inject":
            rx.inject(**json.loads(raw or b"{}"))
            self._send(200, b"{}")
            return
        if self.path != INGEST_PATH:
            self._send(404, b'{"detail":"not found"}')
            return
        fault = rx.next_fault()
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.reset:
            rx.record(RequestLog(time.time(), None, "reset", self.headers.get("Idempotency-Key"),
                                 self.headers.get("X-Request-ID"), wire_bytes=len(raw)))
            self._drop()
            return
        if fault is not None and fault.status is not None:
            body = fault.body if fault.body is not None else json.dumps(
                {"detail": f"injected {fault.status}"})
            extra = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            extra.update(fault.headers or {})
            rx.record(RequestLog(time.time(), fault.status, "injected",
                                 self.headers.get("Idempotency-Key"),
                                 self.headers.get("X-Request-ID"), wire_bytes=len(raw)))
            self._send(fault.status, body.encode() if isinstance(body, str) else body,
                       fault.content_type, extra)
            return
        status, answer, log = rx.handle(self.headers, raw)
        if fault is not None and fault.store_then_drop:
            log.outcome, log.status = f"{log.outcome}+dropped", None
            rx.record(log)
            self._drop()
            return
        rx.record(log)
        self._send(status, json.dumps(answer).encode())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--api-key", default="test-key")
    ap.add_argument("--max-rows", type=int)
    ap.add_argument("--max-body-bytes", type=int)
    ap.add_argument("--no-bodies", action="store_true", help="keep keys only (big benchmarks)")
    args = ap.parse_args(argv)
    rx = IngestReceiver(args.api_key, args.port, max_rows=args.max_rows,
                        max_body_bytes=args.max_body_bytes, keep_bodies=not args.no_bodies)
    rx.up()
    print(f"READY {rx.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        rx.down()


if __name__ == "__main__":
    main()
