"""Packed readings: contract JSON fragments, pre-serialized at ingest, compressed per chunk.

A *chunk* holds the readings of one source from one commit group (at most :data:`CHUNK_MAX`),
each as the tail of its contract JSON object (everything after ``"value":``)::

    20.25,"timestamp":"2026-11-27T10:15:01.000000Z","quality":1.0}
    20.5,"timestamp":"2026-11-27T10:15:01.001000Z","quality":1.0,"metadata":{"node":"x"}}

joined by ``"\\n"`` and zlib-compressed. A raw newline never occurs inside compact JSON (it is
escaped in strings), so ``"\\n"`` separates readings unambiguously: splitting a chunk is a
``str.split`` and the wire form is ``prefix + text.replace("\\n", "," + prefix)`` where
``prefix`` is ``{"sensor_id":…,"sensor_type":…,"unit":…,"value":`` of the chunk's source.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from edge_agent.records import Reading

CHUNK_MAX = 4096            # readings per chunk (bounds the work of splitting one)
LEVEL = 1                   # zlib level: ~6 bytes per reading, ~0.3 µs per reading
_MAX_TS = 253402300800.0    # year 10000
_META_CACHE_MAX = 4096

Key = tuple[str, str, str]  # sensor_id, sensor_type, unit


class Run:
    """Fragments of one source, in order, with their time range (µs)."""

    __slots__ = ("frags", "hi", "lo")

    def __init__(self) -> None:
        self.frags: list[str] = []
        self.lo = 1 << 62
        self.hi = -1

    def extend(self, other: Run) -> None:
        self.frags += other.frags
        self.lo = min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON that never contains NaN/Inf (they become strings) and never fails."""
    try:
        return json.dumps(obj, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_clean(obj), separators=(",", ":"), default=str, allow_nan=False)


def prefix(key: Key) -> str:
    a, b, c = key
    return (f'{{"sensor_id":{json.dumps(a)},"sensor_type":{json.dumps(b)},'
            f'"unit":{json.dumps(c)},"value":')


class Packer:
    """Records → per-source :class:`Run` of fragments. Caches are per instance, so use one
    packer per thread (they are plain dicts; a lost race only costs a recomputation)."""

    def __init__(self) -> None:
        self._secs: dict[str, str] = {}
        self._quals: dict[float, str] = {}
        self._metas: dict[Any, str] = {}

    def ts_text(self, us: int) -> str:
        """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` for integer µs (seconds part cached)."""
        if us < 1_000_000:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(0)) + f".{us:06d}Z"
        u = str(us)
        s = u[:-6]
        base = self._secs.get(s)
        if base is None:
            if len(self._secs) > 100_000:
                self._secs.clear()
            base = self._secs[s] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(s)))
        return f"{base}.{u[-6:]}Z"

    def meta_text(self, meta: dict[str, Any]) -> str:
        try:
            key = tuple(meta.items())
            hit = self._metas.get(key)
        except TypeError:  # unhashable values: no caching
            return dumps(meta)
        if hit is None:
            if len(self._metas) > _META_CACHE_MAX:
                self._metas.clear()
            hit = self._metas[key] = dumps(meta)
        return hit

    def fragment(self, value: float | None, us: int, quality: float, meta: str | None) -> str:
        v = "null" if value is None else repr(value)
        q = self._quals.get(quality)
        if q is None:
            q = repr(float(quality))
            if len(self._quals) < 1024:
                self._quals[quality] = q
        if meta:
            return f'{v},"timestamp":"{self.ts_text(us)}","quality":{q},"metadata":{meta}}}'
        return f'{v},"timestamp":"{self.ts_text(us)}","quality":{q}}}'

    def readings(self, records: Iterable[Reading], out: dict[Key, Run]) -> None:
        """Append the fragments of ``records`` (Readings only) to ``out``, per source.

        Raises ValueError for a timestamp that is not a finite number in range; NaN/Inf values
        and out-of-range qualities are sanitised (``Reading.sanitised``)."""
        secs, quals = self._secs, self._quals
        for rec in records:
            v, q, ts = rec.value, rec.quality, rec.timestamp
            if not (type(v) is float and v - v == 0.0 and type(q) is float and 0.0 <= q <= 1.0
                    and type(ts) is float and 1.0 <= ts < _MAX_TS):
                self._slow(rec, out)
                continue
            key = (rec.sensor_id, rec.sensor_type, rec.unit)
            run = out.get(key)
            if run is None:
                _check_key(key)
                run = out[key] = Run()
            us = round(ts * 1_000_000)
            u = str(us)
            base = secs.get(u[:-6])
            if base is None:
                base = self.ts_text(us)[:-8]
            qt = quals.get(q)
            if qt is None:
                qt = repr(q)
            if run.lo > us:
                run.lo = us
            if run.hi < us:
                run.hi = us
            if rec.metadata:
                run.frags.append(f'{v!r},"timestamp":"{base}.{u[-6:]}Z","quality":{qt},'
                                 f'"metadata":{self.meta_text(rec.metadata)}}}')
            else:
                run.frags.append(f'{v!r},"timestamp":"{base}.{u[-6:]}Z","quality":{qt}}}')

    def _slow(self, rec: Reading, out: dict[Key, Run]) -> None:
        r = rec.sanitised()
        ts = r.timestamp
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise ValueError(f"{r.sensor_id}: timestamp {ts!r} is not a finite number")
        us = round(ts * 1_000_000)
        if not 0 <= us < _MAX_TS * 1_000_000:
            raise ValueError(f"{r.sensor_id}: timestamp {ts!r} out of range")
        v = r.value
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise TypeError(f"{r.sensor_id}: value {v!r} is not a number")
        q = float(r.quality)
        key = (r.sensor_id, r.sensor_type, r.unit)
        _check_key(key)
        run = out.get(key)
        if run is None:
            run = out[key] = Run()
        run.lo, run.hi = min(run.lo, us), max(run.hi, us)
        run.frags.append(self.fragment(None if v is None else float(v), us, q,
                                       self.meta_text(r.metadata) if r.metadata else None))


def _check_key(key: Key) -> None:
    for part in key:
        if type(part) is not str:
            raise TypeError(f"reading source fields must be str, got {key!r}")


ChunkRow = tuple[int, int, int, int, int, bytes]  # src, n, ts lo, ts hi, wire bytes, body


def chunk_rows(runs: dict[Key, Run], source_id: Callable[[Key], int]) -> list[ChunkRow]:
    """Rows for the packed ``readings`` table: one per source and CHUNK_MAX readings."""
    rows: list[ChunkRow] = []
    for key, run in runs.items():
        src = source_id(key)
        plen = len(prefix(key)) + 1
        frags = run.frags
        for i in range(0, len(frags), CHUNK_MAX):
            part = frags[i:i + CHUNK_MAX]
            text = "\n".join(part)
            rows.append((src, len(part), run.lo, run.hi, plen * len(part) + len(text),
                         zlib.compress(text.encode(), LEVEL)))
    return rows


def unpack(body: bytes) -> str:
    return zlib.decompress(body).decode()


def pack_text(frags: list[str]) -> bytes:
    return zlib.compress("\n".join(frags).encode(), LEVEL)
