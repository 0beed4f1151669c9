"""The ingest contract's answer table, and the uploader's settings.

:func:`classify` maps one HTTP response to the batch's outcome (a value, never an exception),
row by row of ``../shared/contracts/ingest-api.md``: ``Delivered`` (accepted, duplicate_ignored,
409 on a single row: that row is already stored), ``Split`` (413; 409 on several rows: split
until the rows already stored stand alone), ``Rejected`` (400/422, 413 on a single row: quarantine),
or ``RetryAfter`` (401/403 slowly; 408/429/5xx and anything else, including a 2xx whose body is
not the contract's JSON — never counted as delivered).
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field

from edge_agent.settings import ByteSize, Duration, Model, SecretField

from .delivery import Delivered, Outcome, Rejected, RetryAfter, Split

if TYPE_CHECKING:  # annotations only: httpx is imported by the uploader, when one runs
    import httpx

INGEST_PATH = "/api/v1/data/ingest"


class UploaderConfig(Model):
    """Section ``[uploader]``; ``url`` is the API base (``None``: keep everything buffered)."""

    url: str | None = None
    api_key: SecretField | None = None
    batch_max_rows: int = Field(5000, gt=0)
    batch_max_bytes: ByteSize = Field(4 * 1024**2, ge=1024)
    gzip: bool = True
    gzip_level: int = Field(5, ge=1, le=9)
    timeout: Duration = Field(30.0, gt=0)
    backoff_initial: Duration = Field(1.0, gt=0)
    backoff_max: Duration = Field(300.0, gt=0)
    retry_after_max: Duration = Field(3600.0, gt=0)
    auth_retry_interval: Duration = Field(300.0, gt=0)
    bandwidth_limit: ByteSize | None = Field(None, gt=0)
    interval: Duration = Field(1.0, ge=0)
    verify_tls: bool = True

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.url is not None:
            out += [("url", why) for why in self.url_problems(self.url)]
            if self.api_key is None:
                out.append(("api_key", "is required when url is set (or give api_key_file)"))
        if self.backoff_initial > self.backoff_max:
            out.append(("backoff_initial", "must not exceed backoff_max"))
        return out

    @property
    def endpoint(self) -> str:
        """The ingest URL: the base URL's path + ``/api/v1/data/ingest`` (a query, which the
        config refuses, would stay a query)."""
        parts = urlsplit(self.url or "")
        path = parts.path.rstrip("/")
        path = path if path.endswith(INGEST_PATH) else path + INGEST_PATH
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    @staticmethod
    def url_problems(url: str) -> list[str]:
        """Why ``url`` cannot be the ingest base URL (never repeats it: it may hold a secret)."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            return [f"is not a valid URL ({exc})"]
        if parts.scheme not in ("http", "https"):
            return ["must start with http:// or https://"]
        if parts.username is not None or parts.password is not None:
            return ["must not carry credentials (user:password@); give the key in api_key or "
                    "api_key_file"]
        if not parts.hostname:
            return ["names no host"]
        if parts.query or parts.fragment:
            return ["must not have a ?query or #fragment (the ingest path is appended to the "
                    "base URL; a token goes in api_key)"]
        return []


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)  # RFC 9110: delay-seconds (decimals tolerated)
    except ValueError:
        pass
    else:
        return secs if secs >= 0 and secs == secs else None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - time.time())


def _text(resp: httpx.Response, limit: int = 4000) -> str:
    """The answer's text for reasons and logs; never raises (bogus charsets, bad bytes)."""
    try:
        return resp.text[:limit]
    except (LookupError, UnicodeDecodeError, ValueError):
        return resp.content[:limit].decode("utf-8", "replace")


def classify(resp: httpx.Response, n_rows: int) -> Outcome:
    """Map the answer to a batch of ``n_rows`` rows to an outcome, per the contract's table."""
    st = resp.status_code
    status = str(st)
    if st in (200, 201, 202):
        try:
            data: Any = resp.json()
        except (ValueError, RecursionError, LookupError):  # not JSON, bad charset, too deep
            return RetryAfter("bad_body", f"{st} with a non-JSON body", status=status)
        if isinstance(data, dict) and isinstance(data.get("event_id"), str):
            if data.get("status") == "accepted" and isinstance(data.get("accepted"), int):
                return Delivered("accepted", status)
            if data.get("status") == "duplicate_ignored":
                return Delivered("duplicate", status)
        return RetryAfter("bad_body", f"{st} with an unexpected body {_text(resp, 200)!r}",
                          status=status)
    if st == 409:  # some rows already stored, nothing of this request was
        if n_rows == 1:
            return Delivered("conflict", status)  # that row is stored: set aside
        return Split("409: rows already stored among new ones", status)
    if st == 413:
        if n_rows == 1:
            return Rejected(f"413 for a single-row batch: {_text(resp)}", status)
        return Split("413: too large", status)
    if st in (400, 422):
        return Rejected(_text(resp), status)
    if st in (401, 403):
        return RetryAfter("auth", f"{st} {_text(resp, 200)}", slow=True, status=status)
    if st in (408, 429) or 500 <= st <= 599:
        kind = "http_429" if st == 429 else f"http_{st // 100}xx" if st >= 500 else "http_408"
        return RetryAfter(kind, status, after=parse_retry_after(resp.headers.get("Retry-After")),
                          status=status)
    return RetryAfter("unexpected", f"unexpected status {st}", status=status)
