"""Commit lag: how long readings waited between their timestamp and their commit.

For a reading stamped at its source tick, ``commit time - timestamp`` is the tick → commit
latency: polling or publishing, the driver, the queue, the gate and the group commit together.
:class:`CommitLag` keeps a cumulative histogram of it over every committed reading (in
:data:`STEP_MS` steps up to :data:`MAX_MS`; later ones in the last bucket), one numpy pass per
commit. ``Buffer.stats()["commit_lag_ms"]`` gives its percentiles since start; a caller that
wants a window takes :attr:`CommitLag.counts` at both ends and subtracts them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

STEP_MS = 5
MAX_MS = 60_000
_BINS = MAX_MS // STEP_MS + 1
BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000)
"""Upper bounds of the histogram /metrics exports (``edge_agent_reading_commit_lag_seconds``)."""


class CommitLag:
    def __init__(self) -> None:
        self.counts: npt.NDArray[np.int64] = np.zeros(_BINS, dtype=np.int64)
        self.total_us = 0   # sum of every observed lag (the histogram's _sum)

    def observe(self, us: Sequence[int], now_us: int | None = None) -> None:
        """Readings with timestamps ``us`` (µs) were committed at ``now_us`` (default: now)."""
        if not us:
            return
        now = time.time_ns() // 1000 if now_us is None else now_us
        lag_us = np.maximum(now - np.fromiter(us, dtype=np.int64, count=len(us)), 0)
        self.total_us += int(lag_us.sum())
        hist = np.bincount(np.minimum(lag_us // (1000 * STEP_MS), _BINS - 1))
        self.counts[:len(hist)] += hist

    def summary(self) -> dict[str, object]:
        """Percentiles (:func:`percentiles`), plus ``buckets`` (cumulative count at each of
        :data:`BUCKETS_MS`, a lag counting in a bucket when its 5 ms bin lies under the bound)
        and ``sum_s`` for a Prometheus histogram."""
        cum = np.cumsum(self.counts)
        return {**percentiles(self.counts), "sum_s": self.total_us / 1e6,
                "buckets": {b: int(cum[b // STEP_MS - 1]) for b in BUCKETS_MS}}


def percentiles(counts: npt.NDArray[np.int64]) -> dict[str, float | int]:
    """Readings, p50, p99 and max lag (ms, upper edge of their bucket) of a histogram."""
    n = int(counts.sum())
    if n == 0:
        return {"readings": 0}
    cum = np.cumsum(counts)

    def at(q: float) -> float:
        return float((int(np.searchsorted(cum, q * n)) + 1) * STEP_MS)

    return {"readings": n, "p50": at(0.5), "p99": at(0.99),
            "max": float((int(np.nonzero(counts)[0][-1]) + 1) * STEP_MS)}
