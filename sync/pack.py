"""Packed readings: contract JSON objects, pre-serialized at ingest, compressed per chunk.

A *chunk* holds the readings of one commit group in their order (at most :data:`CHUNK_MAX`),
each as its complete contract JSON object::

    {"sensor_id":"p7.temp","sensor_type":"temperature","unit":"degC","value":20.25,
     "timestamp":"2026-11-27T10:15:01.000000Z","quality":1.0}      (on one line)

joined by ``"\n"`` and zlib-compressed (the repeated names compress away: ~6 to 20 bytes per
reading on disk). A raw newline never occurs inside compact JSON (it is escaped in strings), so
``"\n"`` separates readings unambiguously: splitting a chunk is a ``str.split`` and its wire
form is ``text.replace("\n", ",")``. ``srcs`` counts the chunk's readings per source id
(``"3:100,5:20"``) for the quota's per-sensor drop counters.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from edge_agent.records import Reading

CHUNK_MAX = 4096            # readings per chunk (bounds the work of splitting one)
LEVEL = 1                   # zlib level: fast (~0.5 µs per reading), ~10x smaller
_MAX_TS = 253402300800.0    # year 10000
_META_CACHE_MAX = 4096
_FLAT = frozenset((str, int, float, bool, type(None)))

Key = tuple[str, str, str]  # sensor_id, sensor_type, unit


class Run:
    """Reading objects in order, with their timestamps (µs) and sources."""

    __slots__ = ("frags", "keys", "us")

    def __init__(self) -> None:
        self.frags: list[str] = []
        self.us: list[int] = []
        self.keys: list[Key] = []

    def __len__(self) -> int:
        return len(self.frags)

    def add(self, frag: str, us: int, key: Key) -> None:
        self.frags.append(frag)
        self.us.append(us)
        self.keys.append(key)

    def extend(self, other: Run) -> None:
        self.frags += other.frags
        self.us += other.us
        self.keys += other.keys


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
    """Records → a :class:`Run` of reading objects. Caches are per instance, so use one packer
    per thread (they are plain dicts; a lost race only costs a recomputation)."""

    def __init__(self) -> None:
        self._secs: dict[str, str] = {}
        self._quals: dict[float, str] = {}
        self._metas: dict[Any, tuple[tuple[type, ...], str]] = {}
        self._ts_pre: dict[str, str] = {}
        self._q_tail: dict[float, str] = {}
        self._q_meta: dict[float, str] = {}
        self._pres: dict[Key, str] = {}

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
        """``dumps(meta)``, cached for flat metadata (str/int/float/bool/None values; the
        value types are part of the match, so ``True``, ``1`` and ``1.0`` never mix)."""
        types = tuple(map(type, meta.values()))
        if not _FLAT.issuperset(types):
            return dumps(meta)
        key = tuple(meta.items())
        hit = self._metas.get(key)
        if hit is not None and hit[0] == types:
            return hit[1]
        text = dumps(meta)
        if len(self._metas) > _META_CACHE_MAX:
            self._metas.clear()
        self._metas[key] = (types, text)
        return text

    def prefix(self, key: Key) -> str:
        pre = self._pres.get(key)
        if pre is None:
            _check_key(key)
            if len(self._pres) > 100_000:
                self._pres.clear()
            pre = self._pres[key] = prefix(key)
        return pre

    def fragment(self, key: Key, value: float | None, us: int, quality: float,
                 meta: str | None) -> str:
        """The contract JSON object of one reading (already sanitised)."""
        v = "null" if value is None else repr(value)
        q = self._quals.get(quality)
        if q is None:
            q = repr(float(quality))
            if len(self._quals) < 1024:
                self._quals[quality] = q
        pre = self.prefix(key)
        if meta:
            return (f'{pre}{v},"timestamp":"{self.ts_text(us)}","quality":{q},'
                    f'"metadata":{meta}}}')
        return f'{pre}{v},"timestamp":"{self.ts_text(us)}","quality":{q}}}'

    def readings(self, records: Iterable[object], run: Run) -> list[object]:
        """Append the Readings in ``records`` to ``run``, in order; returns the other records
        (and instances of Reading subclasses), in order.

        Raises ValueError for a timestamp that is not a finite number in range; NaN/Inf values
        and out-of-range qualities are sanitised (``Reading.sanitised``)."""
        # Hot loop (~2 µs per reading): few f-string pieces, cached texts for the source, the
        # second and the quality.
        ts_pre, q_tail, q_meta, pres = self._ts_pre, self._q_tail, self._q_meta, self._pres
        frags, uss, keys = run.frags, run.us, run.keys
        others: list[object] = []
        for rec in records:
            if type(rec) is not Reading:
                others.append(rec)
                continue
            v, q, ts = rec.value, rec.quality, rec.timestamp
            if not (type(v) is float and v - v == 0.0 and type(q) is float and 0.0 <= q <= 1.0
                    and type(ts) is float and 1.0 <= ts < _MAX_TS):
                self._slow(rec, run)
                continue
            key = (rec.sensor_id, rec.sensor_type, rec.unit)
            pre = pres.get(key) or self.prefix(key)
            us = round(ts * 1_000_000)
            u = str(us)
            tp = ts_pre.get(u[:-6]) or self._second(u[:-6])
            if rec.metadata:
                qm = q_meta.get(q) or self._quality(q)[1]
                frags.append(f"{pre}{v!r}{tp}{u[-6:]}{qm}{self.meta_text(rec.metadata)}}}")
            else:
                qt = q_tail.get(q) or self._quality(q)[0]
                frags.append(f"{pre}{v!r}{tp}{u[-6:]}{qt}")
            uss.append(us)
            keys.append(key)
        return others

    def _second(self, secs: str) -> str:
        """``,"timestamp":"YYYY-MM-DDTHH:MM:SS.`` for a number of seconds (text), cached."""
        if len(self._ts_pre) > 100_000:
            self._ts_pre.clear()
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(secs)))
        tp = self._ts_pre[secs] = f',"timestamp":"{text}.'
        return tp

    def _quality(self, q: float) -> tuple[str, str]:
        """``Z","quality":<q>}`` and ``Z","quality":<q>,"metadata":``, cached."""
        tail, meta = f'Z","quality":{q!r}}}', f'Z","quality":{q!r},"metadata":'
        if len(self._q_tail) < 1024:
            self._q_tail[q], self._q_meta[q] = tail, meta
        return tail, meta

    def reading(self, rec: Reading, run: Run) -> None:
        """One reading (also of a subclass of Reading)."""
        self._slow(rec, run)

    def _slow(self, rec: Reading, run: Run) -> None:
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
        key = (r.sensor_id, r.sensor_type, r.unit)
        run.add(self.fragment(key, None if v is None else float(v), us, float(r.quality),
                              self.meta_text(r.metadata) if r.metadata else None), us, key)


def _check_key(key: Key) -> None:
    for part in key:
        if type(part) is not str:
            raise TypeError(f"reading source fields must be str, got {key!r}")


# n, ts lo, ts hi, wire bytes, srcs, body
ChunkRow = tuple[int, int, int, int, str, bytes | str]


def chunk_rows(run: Run, source_id: Callable[[Key], int]) -> list[ChunkRow]:
    """Rows for the packed ``readings`` table: one per CHUNK_MAX readings, in order."""
    rows: list[ChunkRow] = []
    frags, uss, keys = run.frags, run.us, run.keys
    for i in range(0, len(frags), CHUNK_MAX):
        part, us = frags[i:i + CHUNK_MAX], uss[i:i + CHUNK_MAX]
        counts = Counter(keys[i:i + CHUNK_MAX])
        srcs = ",".join(f"{source_id(k)}:{n}" for k, n in counts.items())
        text = "\n".join(part)
        rows.append((len(part), min(us), max(us), len(text) + 1, srcs, pack_text(text)))
    return rows


def pack_text(text: str) -> bytes | str:
    """zlib-compressed UTF-8, or the text itself when that is not smaller (tiny chunks)."""
    raw = text.encode()
    comp = zlib.compress(raw, LEVEL)
    return comp if len(comp) < len(raw) else text


def unpack(body: bytes | str) -> str:
    return body if isinstance(body, str) else zlib.decompress(body).decode()


def parse_srcs(srcs: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in srcs.split(","):
        if part:
            a, b = part.split(":")
            out[int(a)] = out.get(int(a), 0) + int(b)
    return out
