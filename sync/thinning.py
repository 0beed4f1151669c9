"""Thinning: the buffer's first answer to being over its quota (policy ``thin``, :mod:`.quota`).

Each round (:func:`thin`) finds the **densest** unassigned readings (readings per second per
sensor, from each chunk's row columns: no body is read), and thins the spans at that level,
oldest first: every ``thin_factor``-th reading **of each sensor** is kept (the chunks of a run
are rewritten and merged into one row, so whole pages are freed), and so is every
``thin_factor``-th feature vector **of each source** whose window starts in the same time span
(found by a binary search on ids; the survivors are written back densely with their ids). Since
the densest level always goes first, new data is thinned before old data is thinned again: the
resolution stays even across the whole outage, and raw readings and features from its first
hour are kept as long as from its last. Once the densest level left is ``thin_max`` times
sparser than the densest rate seen in this backlog (``meta.thin:d0``, forgotten once the backlog
is empty, :func:`reset_if_empty`), :func:`thin` declines and the quota drops instead.

Only rows no sink has been handed are thinned: chunks after every sink's reading cursor and
feature ids above every sink's feature cursor (a rewrite must not move rows under a cursor or a
pending batch). What is thinned is counted (:mod:`.dropped`).
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .dropped import Dropped, count_features, source_of
from .pack import CHUNK_MAX, LEVEL, pack_text, unpack, unpack_idx
from .storebase import StoreBase

__all__ = ["reset_if_empty", "thin"]


def _keep_mask(sources: list[Any], k: int) -> list[bool]:
    """Keep every k-th row of each source (its 1st, (k+1)-th, ...)."""
    seen: Counter[Any] = Counter()
    out = []
    for s in sources:
        out.append(seen[s] % k == 0)
        seen[s] += 1
    return out


@dataclass
class _Group:
    """Consecutive thinned chunks merged into one row (the first one's id): fewer, fuller rows,
    so thinning frees whole pages (holes in half-empty pages would not be reused)."""

    ids: list[int] = field(default_factory=list)
    tails: list[str] = field(default_factory=list)
    srcs: list[int] = field(default_factory=list)  # global source id of each reading
    ts: int = 0
    ts_max: int = 0
    old_bytes: int = 0
    gone: Counter[int] = field(default_factory=Counter)  # readings removed per source id


def _add_chunk(g: _Group, row: tuple[Any, ...]) -> None:
    cid, n, ts, ts_max, srcs, idx, body = row
    ids = [int(x) for x in str(srcs).split(",")]
    g.tails += unpack(body).split("\n")
    g.srcs += [ids[i] for i in unpack_idx(idx, int(n))]
    g.ts = min(g.ts, int(ts)) if g.ids else int(ts)
    g.ts_max = max(g.ts_max, int(ts_max))
    g.ids.append(int(cid))
    g.old_bytes += len(body) + len(idx)


def _write_group(store: StoreBase, g: _Group, k: int) -> int:
    """Keep every k-th reading of each sensor across the group (so chunks holding one reading
    per sensor, one poll each, thin too), store the rest in the group's first row, delete the
    others; returns the bytes freed."""
    keep = _keep_mask(g.srcs, k)
    g.gone = Counter(s for s, m in zip(g.srcs, keep, strict=True) if not m)
    g.tails = [t for t, m in zip(g.tails, keep, strict=True) if m]
    g.srcs = [s for s, m in zip(g.srcs, keep, strict=True) if m]
    table = sorted(set(g.srcs))
    pos = {src: i for i, src in enumerate(table)}
    ix = array("H" if len(table) <= 0xFFFF else "I", (pos[s] for s in g.srcs))
    srcs = ",".join(map(str, table))
    prefixes = store.prefixes(srcs)
    text = "\n".join(g.tails)
    size = len(text) + sum(len(prefixes[i]) + 1 for i in ix)
    body, idx = pack_text(text), zlib.compress(ix.tobytes(), LEVEL)
    c = store.conn
    c.execute("UPDATE readings SET n = ?, ts = ?, ts_max = ?, size = ?, srcs = ?, idx = ?, "
              "body = ? WHERE id = ?", (len(g.tails), g.ts, g.ts_max, size, srcs, idx, body,
                                        g.ids[0]))
    c.executemany("DELETE FROM readings WHERE id = ?", [(i,) for i in g.ids[1:]])
    c.executemany("INSERT INTO dropped(src, n) VALUES (?, ?) ON CONFLICT(src) "
                  "DO UPDATE SET n = n + excluded.n", list(g.gone.items()))
    return g.old_bytes - len(body) - len(idx)


def _first_unassigned_chunk(store: StoreBase) -> int:
    """The first chunk no sink has been handed any of: after every sink's reading cursor (of
    sinks registered now or in earlier runs; pending batches all lie before their sink's
    cursor) and the delivered head. A partly assigned chunk stays as it is. Thinning rewrites
    and merges chunks, so it never touches one a cursor or a batch slice points into."""
    first = 0
    for cid, off in [store.rhead(), *(cur.r for cur in store.cursors.values())]:
        first = max(first, cid + 1 if off > 0 else cid)
    return first


def _first_unassigned_feature(store: StoreBase) -> int:
    """The first feature id no sink has taken (ids above every sink's feature cursor)."""
    return max((cur.ft for cur in store.cursors.values()), default=0) + 1


@dataclass
class _Chunk:
    id: int
    n: int
    ts: int
    ts_max: int
    nbytes: int
    density: float  # readings per second per source


def _chunks(store: StoreBase) -> list[_Chunk]:
    """The unassigned chunks, oldest first, with their reading density (row columns only: the
    packed bodies are not read)."""
    out = []
    for cid, n, ts, ts_max, srcs, nbytes in store.conn.execute(
            "SELECT id, n, ts, ts_max, srcs, length(body) + length(idx) FROM readings "
            "WHERE id >= ? ORDER BY id", (_first_unassigned_chunk(store),)):
        span = max(int(ts_max) - int(ts), 1_000_000) / 1e6
        out.append(_Chunk(int(cid), int(n), int(ts), int(ts_max), int(nbytes),
                          int(n) / (str(srcs).count(",") + 1) / span))
    return out


def _d0(store: StoreBase, densest: float) -> float:
    """The densest (unthinned) rate seen in this backlog, kept in ``meta``."""
    row = store.conn.execute("SELECT value FROM meta WHERE key = 'thin:d0'").fetchone()
    d0 = max(float(row[0]) if row is not None else 0.0, densest)
    store.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('thin:d0', ?)",
                       (repr(d0),))
    return d0


def reset_if_empty(store: StoreBase) -> None:
    """A drained backlog starts the next outage at full resolution."""
    if store.rows["readings"] == 0:
        store.conn.execute("DELETE FROM meta WHERE key = 'thin:d0'")


def thin(store: StoreBase, need: int, k: int, thin_max: int, out: Dropped) -> int | None:
    """Thin the densest spans (oldest first) by ``k`` until about ``need`` bytes are freed;
    readings and the feature vectors of the same time span alike. None when everything is
    already thinned ``thin_max`` times (relative to the densest rate seen): drop instead."""
    chunks = _chunks(store)
    if not chunks:
        return None
    d_max = max(ch.density for ch in chunks)
    if d_max <= _d0(store, d_max) / thin_max * 1.0001:
        return None
    tier = d_max / math.sqrt(k)  # the densest level: thinned first, so density stays even
    freed = 0
    groups: list[list[_Chunk]] = [[]]
    for ch in chunks:  # runs of adjacent chunks of the densest level
        if ch.density >= tier:
            groups[-1].append(ch)
        elif groups[-1]:
            groups.append([])
    for run in groups:
        while run and freed < need:
            group: list[_Chunk] = []
            g = est = 0
            while run and (not group or (g + run[0].n // k + 1 <= CHUNK_MAX
                                         and est < need - freed)):
                ch = run.pop(0)
                group.append(ch)
                g += ch.n // k + 1
                est += ch.nbytes * (k - 1) // k
            freed += _thin_group(store, group, k, out)
        if freed >= need:
            break
    return freed


def _thin_group(store: StoreBase, group: list[_Chunk], k: int, out: Dropped) -> int:
    """One transaction: the group's chunks thinned and merged, and the features of its span."""
    c = store.conn
    grp, feats = _Group(), Counter[str]()
    with store.tx(full=True):
        for ch in group:
            row = c.execute("SELECT id, n, ts, ts_max, srcs, idx, body FROM readings "
                            "WHERE id = ?", (ch.id,)).fetchone()
            _add_chunk(grp, tuple(row))
        freed = _write_group(store, grp, k)
        freed += _thin_features_between(store, grp.ts, grp.ts_max, k, feats)
    # committed: now the counters in memory (a failed commit, e.g. SQLITE_FULL, changes none)
    for src, cnt in grp.gone.items():
        store.dropped[src] = store.dropped.get(src, 0) + cnt
        key = store.key_of(src)
        out.readings[key[0] if key else f"src{src}"] += cnt
    store.rtotal -= sum(grp.gone.values())
    store._count_readings()
    store.rows["features"] -= sum(feats.values())
    out.features.update(feats)
    out.thinned += sum(grp.gone.values()) + sum(feats.values())
    return freed


def _feature_id_at(store: StoreBase, us: int, lo: int, hi: int) -> int:
    """The first feature id in [lo, hi + 1] whose ``ts`` is >= ``us`` (ids follow insertion,
    which follows time closely enough: a binary search of point lookups, no table scan)."""
    c = store.conn
    while lo <= hi:
        mid = (lo + hi) // 2
        row = c.execute("SELECT id, ts FROM features WHERE id >= ? ORDER BY id LIMIT 1",
                        (mid,)).fetchone()
        if row is None or int(row[0]) > hi:
            hi = mid - 1
        elif int(row[1]) < us:
            lo = int(row[0]) + 1
        else:
            hi = mid - 1
    return lo


def _thin_features_between(store: StoreBase, t1: int, t2: int, k: int, per: Counter[str]
                           ) -> int:
    """Keep every k-th unassigned feature vector of each source in [t1, t2]. The span is
    deleted and its survivors written back with their ids, densely (deleting every k-th row
    alone would leave half-empty pages that are never reused)."""
    c = store.conn
    first = _first_unassigned_feature(store)
    lo_id, hi_id = c.execute("SELECT min(id), max(id) FROM features WHERE id >= ?",
                             (first,)).fetchone()
    if lo_id is None:
        return 0
    a = _feature_id_at(store, t1, int(lo_id), int(hi_id))
    b = _feature_id_at(store, t2 + 1, a, int(hi_id)) - 1
    if b < a:
        return 0
    rows = c.execute("SELECT id, ts, body FROM features WHERE id BETWEEN ? AND ? ORDER BY id",
                     (a, b)).fetchall()
    srcs = [source_of(body) for _, _, body in rows]  # each body decoded once
    kept, gone, freed = [], Counter[str](), 0
    for (rid, ts, body), src, m in zip(rows, srcs, _keep_mask(srcs, k), strict=True):
        if m:
            kept.append((rid, ts, body))
        else:
            gone[src] += 1
            freed += len(body)
    if not gone:
        return 0
    c.execute("DELETE FROM features WHERE id BETWEEN ? AND ?", (a, b))
    c.executemany("INSERT INTO features(id, ts, body) VALUES (?, ?, ?)", kept)
    count_features(store, gone)
    per.update(gone)
    return freed
