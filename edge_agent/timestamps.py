"""Timestamps, formatted and parsed in one place.

In memory a timestamp is POSIX seconds (float, UTC); the buffer stores integer microseconds
(:func:`to_us`, exact for any µs-aligned input); the contract's wire form is RFC 3339 UTC with
microseconds and ``Z`` (:func:`format_us`, :func:`format_ts`), read back by :func:`parse_ts`.

One valid range for every layer: ``MIN_TS <= ts < MAX_TS``, 1970 up to (not including) the year
10000, the last instant RFC 3339's four-digit year can write. A reading outside it is refused at
admission (``agent/admission.py``) and can never reach the wire.

This module imports nothing of the project.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

MIN_TS = 0.0
MAX_TS = 253_402_300_800.0   # 10000-01-01T00:00:00Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = 1_000_000


def now() -> float:
    """Wall-clock time as POSIX seconds (UTC)."""
    return time.time()


def in_range(ts: float) -> bool:
    """True for a finite timestamp in ``[MIN_TS, MAX_TS)``."""
    return math.isfinite(ts) and MIN_TS <= ts < MAX_TS


def to_us(ts: float) -> int:
    """POSIX seconds to integer microseconds (rounded, exact for any µs-aligned input)."""
    return round(ts * _US)


def from_us(us: int) -> float:
    return us / _US


def second_text(secs: int) -> str:
    """Whole POSIX seconds to ``YYYY-MM-DDTHH:MM:SS`` (UTC, no fraction, no zone)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def format_us(us: int) -> str:
    """Integer microseconds to RFC 3339 UTC with microseconds and ``Z``."""
    secs, micros = divmod(us, _US)
    return f"{second_text(secs)}.{micros:06d}Z"


def format_ts(ts: float) -> str:
    """POSIX seconds to RFC 3339 UTC with microseconds and ``Z``."""
    return format_us(to_us(ts))


def format_ms(ts: float) -> str:
    """POSIX seconds to RFC 3339 UTC with milliseconds and ``Z`` (log lines)."""
    secs = math.floor(ts)
    return f"{second_text(secs)}.{int((ts - secs) * 1000):03d}Z"


def compact(ts: float | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ`` (UTC) for names of files and model versions; default now."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now() if ts is None else ts))


def local_text(ts: float, with_date: bool = True) -> str:
    """Local wall-clock time for people (``edge-agent status``), never for data."""
    return time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", time.localtime(ts))


def parse_ts(text: str) -> float:
    """RFC 3339 (``Z`` or an offset; no zone means UTC) to POSIX seconds. Raises ``ValueError``
    for anything else."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH).total_seconds()


def parse_us(text: str) -> int:
    """RFC 3339 to integer microseconds, exactly (no float on the way)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds
