"""The tally of what the quota gives up (:mod:`.quota`, :mod:`.thinning`).

Everything given up is counted per kind and source: in memory per pass (:class:`Dropped`), in
persistent tables (``dropped`` for readings by source id, ``dropped_kind`` (schema v4) for
feature vectors, :func:`count_features`), and reported by :class:`DropNotices` in at most one
``buffer_quota_drop`` event per ``drop_event_interval``.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .storebase import StoreBase

__all__ = ["DropNotices", "Dropped", "count_features", "dropped_by_kind", "source_of"]

_DECODER = json.JSONDecoder()
_SOURCE_AT = len('{"source_id":')


@dataclass
class Dropped:
    """Rows given up, per kind and source."""

    readings: Counter[str] = field(default_factory=Counter)
    features: Counter[str] = field(default_factory=Counter)
    thinned: int = 0  # rows removed by thinning (the rest by dropping whole spans)

    @property
    def total(self) -> int:
        return sum(self.readings.values()) + sum(self.features.values())

    def add(self, other: Dropped) -> None:
        self.readings.update(other.readings)
        self.features.update(other.features)
        self.thinned += other.thinned


def dropped_by_kind(store: StoreBase) -> dict[str, dict[str, int]]:
    """Persistent counters: {"readings": {sensor: n}, "features": {source: n}}."""
    out: dict[str, dict[str, int]] = {"readings": store.dropped_by_sensor(), "features": {}}
    for kind, source, n in store.conn.execute("SELECT kind, source, n FROM dropped_kind"):
        out.setdefault(str(kind), {})[str(source)] = int(n)
    return out


def source_of(body: str) -> str:
    """The source id of a feature vector row's body (``"?"`` when it cannot be read)."""
    try:
        return str(_DECODER.raw_decode(body, _SOURCE_AT)[0])
    except ValueError:
        return "?"


def count_features(store: StoreBase, per: Counter[str]) -> None:
    """Add feature vectors given up, per source, to the persistent counters (``dropped_kind``);
    in the caller's transaction."""
    store.conn.executemany(
        "INSERT INTO dropped_kind(kind, source, n) VALUES ('features', ?, ?) "
        "ON CONFLICT(kind, source) DO UPDATE SET n = n + excluded.n", list(per.items()))


class DropNotices:
    """Coalesces drops into at most one ``buffer_quota_drop`` event per ``interval`` seconds:
    the first drop of a quiet period is reported at once, later ones are summed and reported
    when the period is over (or at close)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.pending = Dropped()
        self.reasons: Counter[str] = Counter()
        self.last = -math.inf

    def add(self, reason: str, dropped: Dropped) -> None:
        if dropped.total:
            self.pending.add(dropped)
            self.reasons[reason] += dropped.total

    def due(self, now: float | None = None, final: bool = False) -> dict[str, Any] | None:
        """The event details to emit now, if any (and start a new period)."""
        t = time.monotonic() if now is None else now
        if not self.pending.total or (not final and t - self.last < self.interval):
            return None
        p = self.pending
        details: dict[str, Any] = {
            "reasons": dict(self.reasons), "readings": sum(p.readings.values()),
            "features": sum(p.features.values()), "thinned": p.thinned,
            "by_sensor": dict(p.readings), "features_by_source": dict(p.features),
            "period_s": self.interval,
        }
        self.pending, self.reasons, self.last = Dropped(), Counter(), t
        return details
