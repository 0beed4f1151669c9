"""What the buffer gives up when it is over its quota: thin evenly first, then drop oldest.

Policy ``thin`` (the default) frees the bytes needed in rounds of :func:`.thinning.thin` (the
densest unassigned spans thinned by ``thin_factor``, readings and feature vectors alike, so the
resolution stays even across the whole outage; see that module).

Once the densest level left is ``thin_max`` times sparser than the densest rate seen in this
backlog (``meta.thin:d0``, forgotten once the backlog is empty), thinning stops and the oldest
rows are dropped whole, as with policy ``drop_oldest`` (the previous behaviour: oldest readings
first, then features). Events are never dropped.

Dropping whole rows follows :meth:`.storebase.StoreBase.drop_oldest`: anything outside every
sink's pending batches.

Everything given up is counted per kind and source in persistent tables (``dropped`` for
readings by source id, ``dropped_kind`` (schema v4) for feature vectors) and reported by
:class:`DropNotices` in at most one ``buffer_quota_drop`` event per ``drop_event_interval``
(:mod:`.dropped`).
"""

from __future__ import annotations

from collections import Counter

from .dropped import DropNotices, Dropped, count_features, dropped_by_kind, source_of
from .storebase import StoreBase
from .thinning import reset_if_empty, thin

__all__ = ["DropNotices", "Dropped", "drop_features", "dropped_by_kind", "make_room",
           "reset_if_empty"]


def drop_features(store: StoreBase, n: int, out: Dropped, older_than_us: int | None = None
                  ) -> int:
    """Delete the ``n`` oldest feature vectors that no sink holds in a pending batch (the rule
    of :meth:`.storebase.StoreBase.drop_oldest`; older than ``older_than_us`` if given),
    counted per source; returns their bytes."""
    c = store.conn
    out_, args = store._outside(store._pending_ranges("features"))
    cond, extra = ("", ()) if older_than_us is None else (" AND ts < ?", (older_than_us,))
    rows = c.execute(f"SELECT id, body FROM features WHERE 1{out_}{cond} ORDER BY id "
                     "LIMIT ?", (*args, *extra, n)).fetchall()
    if not rows:
        return 0
    per: Counter[str] = Counter(source_of(b) for _, b in rows)
    with store.tx(full=True):
        # the same conditions as the SELECT: exactly those rows (one writer thread)
        c.execute(f"DELETE FROM features WHERE id <= ?{out_}{cond}",
                  (int(rows[-1][0]), *args, *extra))
        count_features(store, per)
    store.rows["features"] -= len(rows)
    store.head_ts["features"] = store._head("features")
    out.features.update(per)
    return sum(len(b) for _, b in rows)


# -- the policy -----------------------------------------------------------------------------
def make_room(store: StoreBase, need: int, policy: str, factor: int, thin_max: int) -> Dropped:
    """Free about ``need`` bytes of readings and features by ``policy`` (see the module doc)."""
    out = Dropped()
    if need <= 0:
        return out
    freed = 0
    if policy == "thin":
        for _ in range(64):  # each round thins the densest level left
            got = thin(store, need - freed, factor, thin_max, out)
            if got is None or got <= 0:
                break
            freed += got
            if freed >= need:
                break
    if freed < need:
        for kind in ("readings", "features"):
            if store.rows[kind]:
                freed += _drop_oldest(store, kind, need - freed, out)
            if freed >= need:
                break
    store.head_ts["readings"] = store._head("readings")
    store.head_ts["features"] = store._head("features")
    return out


def _drop_oldest(store: StoreBase, kind: str, need: int, out: Dropped) -> int:
    per_row = max(1.0, store.used_bytes() / max(1, store.rows["readings"] + store.rows["features"]))
    if kind == "features":
        return drop_features(store, int(need / per_row) + 1, out)
    before = dict(store.dropped)
    got = store.drop_oldest("readings", int(need / per_row) + 1)
    for src, n in store.dropped.items():
        d = n - before.get(src, 0)
        if d:
            key = store.key_of(src)
            out.readings[key[0] if key else f"src{src}"] += d
    return int(got * per_row)
