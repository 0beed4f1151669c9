"""Packed readings: contract JSON, pre-serialized at ingest, in order, compressed per chunk.

A *chunk* holds up to :data:`CHUNK_MAX` readings of one commit group, in the order they were
put. Each reading is stored as the tail of its contract JSON object, everything after
``"value":``::

    20.25,"timestamp":"2026-11-27T10:15:01.000000Z","quality":1.0}
    7.5,"timestamp":"2026-11-27T10:15:01.000000Z","quality":1.0,"metadata":{"node":"x"}}

joined by ``"\n"`` and zlib-compressed (``body``), with the index of each reading's source in
the chunk's source list (``idx``: uint16 array, zlib; ``srcs``: global source ids). A raw
newline never occurs inside compact JSON (it is escaped in strings), so ``"\n"`` separates
readings unambiguously and splitting a chunk is a ``str.split``. On the wire each tail goes
behind its source's prefix ``{"sensor_id":…,"sensor_type":…,"unit":…,"value":`` (:func:`wire`:
``map`` and ``join``, no Python code per reading).
"""

from __future__ import annotations

import functools
import json
import math
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import compress, repeat
from operator import is_
from typing import Any, TypeVar, cast

from edge_agent.records import Layouts, Reading, ReadingBlock, Sensor

from .run import Key, Run, check_key

CHUNK_MAX = 4096            # readings per chunk (bounds the work of splitting one)
LEVEL = 1                   # zlib level: fast (~0.5 µs per reading), ~10x smaller
_MAX_TS = 253402300800.0    # year 10000
_META_CACHE_MAX = 32768      # >= the sensors of a big gateway: metadata is per sensor
_FLAT = frozenset((str, int, float, bool, type(None)))

_Layout = tuple[list[Key], list[str], dict[Key, int], list[int]]  # see Packer._layout


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


@functools.lru_cache(maxsize=16384)  # per commit, for every source in it (chunk_rows)
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
        self._sensors: dict[Sensor, tuple[Key, str, str]] = {}
        self._layouts: Layouts[_Layout] = Layouts()

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

    def fragment(self, value: float | None, us: int, quality: float, meta: str | None) -> str:
        """The tail of one reading's JSON object (already sanitised)."""
        v = "null" if value is None else repr(value)
        q = self._quals.get(quality)
        if q is None:
            q = repr(float(quality))
            if len(self._quals) < 1024:
                self._quals[quality] = q
        if meta:
            return f'{v},"timestamp":"{self.ts_text(us)}","quality":{q},"metadata":{meta}}}'
        return f'{v},"timestamp":"{self.ts_text(us)}","quality":{q}}}'

    def readings(self, records: Iterable[object], run: Run) -> list[object]:
        """Append the Readings in ``records`` to ``run``, in order; returns the other records
        (and instances of Reading subclasses), in order.

        Raises ValueError for a timestamp that is not a finite number in range; NaN/Inf values
        and out-of-range qualities are sanitised (``Reading.sanitised``)."""
        # Hot loop (~2 µs per reading): few f-string pieces, cached second and quality texts.
        ts_pre, q_tail, q_meta = self._ts_pre, self._q_tail, self._q_meta
        frags, uss, idx, ix = run.frags, run.us, run.idx, run.ix
        others: list[object] = []
        for rec in records:
            if type(rec) is not Reading:
                if type(rec) is ReadingBlock:
                    self.block(rec, run)
                else:
                    others.append(rec)
                continue
            v, q, ts = rec.value, rec.quality, rec.timestamp
            if not (type(v) is float and v - v == 0.0 and type(q) is float and 0.0 <= q <= 1.0
                    and type(ts) is float and 1.0 <= ts < _MAX_TS):
                self._slow(rec, run)
                continue
            key = (rec.sensor_id, rec.sensor_type, rec.unit)
            i = ix.get(key)
            if i is None:
                i = run.source(key)
            us = round(ts * 1_000_000)
            u = str(us)
            tp = ts_pre.get(u[:-6]) or self._second(u[:-6])
            if rec.metadata:
                qm = q_meta.get(q) or self._quality(q)[1]
                frags.append(f"{v!r}{tp}{u[-6:]}{qm}{self.meta_text(rec.metadata)}}}")
            else:
                qt = q_tail.get(q) or self._quality(q)[0]
                frags.append(f"{v!r}{tp}{u[-6:]}{qt}")
            uss.append(us)
            idx.append(i)
        return others

    def block(self, b: ReadingBlock, run: Run) -> None:
        """Append a block's rows to ``run``: one tight loop over the columns, the timestamp
        text made once per distinct timestamp and each sensor's key and metadata JSON once per
        packer; rows that are not clean floats (or carry their own metadata) take the
        :class:`Reading` path."""
        n = len(b.sensors)
        if not len(b.values) == len(b.timestamps) == len(b.quality) == n:
            raise ValueError("reading block columns of different lengths")
        if b.plain():
            return self._plain(b, run)
        ts_pre, sens = self._ts_pre, self._sensors
        frags, uss, idx, sx = run.frags, run.us, run.idx, run.sx
        own = b.metadata
        last_ts: float | None = None
        us, mid = 0, ""
        for i, (s, v, ts, q) in enumerate(zip(b.sensors, b.values, b.timestamps, b.quality,
                                               strict=True)):
            if not (type(v) is float and v - v == 0.0 and type(ts) is float
                    and 1.0 <= ts < _MAX_TS and type(s) is Sensor) or (own and i in own):
                self._slow(b.row(i), run)
                continue
            if ts != last_ts:
                last_ts, us = ts, round(ts * 1_000_000)
                u = str(us)
                mid = (ts_pre.get(u[:-6]) or self._second(u[:-6])) + u[-6:]
            hit = sens.get(s) or self._sensor(s)
            j = sx.get(s)
            if j is None:
                j = sx[s] = run.source(hit[0])
            if q == 1.0 and type(q) is float:
                frags.append(f"{v!r}{mid}{hit[1]}")
            elif type(q) is float and 0.0 <= q <= 1.0:
                frags.append(f"{v!r}{mid}{self._quality_tail(q, hit[2])}")
            else:
                self._slow(b.row(i), run)
                continue
            uss.append(us)
            idx.append(j)

    def _plain(self, b: ReadingBlock, run: Run) -> None:
        """A :meth:`ReadingBlock.plain` block: the same fragments as :meth:`block` makes,
        column by column (``map``/``zip`` in C); Python code per sensor list (:class:`Layouts`)
        or timestamp not seen before only."""
        keys, tails, at, local = self._layouts.get(b.sensors, self._layout)
        if not run.table:  # a fresh run (one per commit): the sources in the layout's order
            run.table.extend(at)
            run.ix.update(at)  # from a dict: its stored hashes are reused, none computed
            js: list[int | None] = list(local)
        else:
            js = list(map(run.ix.get, keys))
            if None in js:  # sources new to this run, in order of first appearance
                new = list(dict.fromkeys(compress(keys, map(is_, js, repeat(None)))))
                run.ix.update(zip(new, range(len(run.table), len(run.table) + len(new)),
                                  strict=True))
                run.table.extend(new)
                js = list(map(run.ix.get, keys))
        us_of: dict[float, int] = {}
        mid_of: dict[float, str] = {}
        for t in set(b.timestamps):
            us = us_of[t] = round(t * 1_000_000)
            u = str(us)
            mid_of[t] = (self._ts_pre.get(u[:-6]) or self._second(u[:-6])) + u[-6:]
        ts = b.timestamps
        run.frags.extend(map("".join, zip(map(repr, b.values), map(mid_of.__getitem__, ts),
                                          tails, strict=True)))
        run.us.extend(map(us_of.__getitem__, ts))
        run.idx.extend(cast(list[int], js))

    def _layout(self, sensors: list[Sensor]) -> _Layout:
        """Per sensor list: each row's source key and JSON end at quality 1.0, the distinct
        keys in order of first appearance (-> their index), and each row's index among them."""
        hits = [self._sensor(s) for s in sensors]
        keys = [h[0] for h in hits]
        at = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        return keys, [h[1] for h in hits], at, [at[k] for k in keys]

    def _sensor(self, s: Sensor) -> tuple[Key, str, str]:
        """A sensor's source key, the end of its JSON objects at quality 1.0 (after the
        timestamp's digits) and its metadata JSON (``""``: none); cached per sensor."""
        hit = self._sensors.get(s)
        if hit is not None:
            return hit
        if len(self._sensors) > _META_CACHE_MAX:
            self._sensors.clear()
        key = (s.sensor_id, s.sensor_type, s.unit)
        check_key(key)
        meta = dumps(dict(s.metadata)) if s.metadata else ""
        hit = self._sensors[s] = (key, self._quality_tail(1.0, meta), meta)
        return hit

    def _quality_tail(self, q: float, meta: str) -> str:
        tail, with_meta = self._quality(q)
        return f"{with_meta}{meta}}}" if meta else tail

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
        run.add(self.fragment(None if v is None else float(v), us, float(r.quality),
                              self.meta_text(r.metadata) if r.metadata else None), us, key)


# n, ts lo, ts hi, wire bytes, srcs, idx, body
ChunkRow = tuple[int, int, int, int, str, bytes, bytes | str]


def chunk_rows(run: Run, ids: Sequence[int]) -> list[ChunkRow]:
    """Rows for the packed ``readings`` table: one per CHUNK_MAX readings, in order (``ids``:
    the stored source id of each of ``run.table``)."""
    rows: list[ChunkRow] = []
    frags, uss, idx = run.frags, run.us, run.idx
    srcs = _memo(_SRCS, tuple(ids), lambda key: ",".join(map(str, key)), 64)
    plens = list(map(_PLENS.get, run.table))  # wire bytes of each source's prefix and comma
    if None in plens:
        plens = [_memo(_PLENS, k, lambda key: len(prefix(key)) + 1, 65536) for k in run.table]
    code = "H" if len(run.table) <= 0xFFFF else "I"
    for i in range(0, len(frags), CHUNK_MAX):
        part, us, ix = frags[i:i + CHUNK_MAX], uss[i:i + CHUNK_MAX], idx[i:i + CHUNK_MAX]
        text = "\n".join(part)
        size = len(text) + sum(map(cast(list[int], plens).__getitem__, ix))
        blob = array(code, ix).tobytes()  # the same indices commit after commit: packed once
        rows.append((len(part), min(us), max(us), size, srcs,
                     _memo(_IDX, blob, lambda b: zlib.compress(b, LEVEL), 64), pack_text(text)))
    return rows


# Per commit, chunk_rows meets the same sources (and the same indices of them) again: what it
# derives from them is kept (pure functions of the key; a lost race recomputes).
_SRCS: dict[tuple[int, ...], str] = {}
_PLENS: dict[Key, int] = {}
_IDX: dict[bytes, bytes] = {}
K = TypeVar("K")
V = TypeVar("V")


def _memo(cache: dict[K, V], key: K, make: Callable[[K], V], limit: int) -> V:
    hit = cache.get(key)
    if hit is None:
        if len(cache) >= limit:
            cache.clear()
        hit = cache[key] = make(key)
    return hit


def pack_text(text: str) -> bytes | str:
    """zlib-compressed UTF-8, or the text itself when that is not smaller (tiny chunks)."""
    raw = text.encode()
    comp = zlib.compress(raw, LEVEL)
    return comp if len(comp) < len(raw) else text


def unpack(body: bytes | str) -> str:
    return body if isinstance(body, str) else zlib.decompress(body).decode()


def unpack_idx(blob: bytes, n: int) -> array[int]:
    raw = zlib.decompress(blob)
    return array("H" if len(raw) == 2 * n else "I", raw)


def per_source(srcs: str, blob: bytes, n: int) -> dict[int, int]:
    """Readings per source id in one chunk."""
    ids = [int(x) for x in srcs.split(",")]
    out: dict[int, int] = {}
    for i, k in Counter(unpack_idx(blob, n)).items():
        out[ids[i]] = out.get(ids[i], 0) + k
    return out


def wire(srcs: list[str], idx: Sequence[int], tails: list[str]) -> str:
    """The readings as comma-separated JSON objects: each tail behind its source's prefix."""
    if len(idx) != len(tails):  # as many as both have (a damaged chunk)
        n = min(len(idx), len(tails))
        idx, tails = idx[:n], tails[:n]
    parts = [","] * (3 * len(tails) - 1)  # prefix, tail, comma, prefix, tail, …, tail
    parts[0::3] = map(srcs.__getitem__, idx)
    parts[1::3] = tails
    return "".join(parts)
