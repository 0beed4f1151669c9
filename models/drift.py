"""Feature drift per source: recent feature vectors against the bundle's training summary.

Two statistics per feature over a rolling window of the last ``window`` seconds of vectors:

* **PSI** (population stability index) over the training-decile bins (the manifest's
  quantiles at 0.1 … 0.9); expected share 10 % per bin for a continuous feature.
* **KS**: the Kolmogorov-Smirnov distance between the recent empirical CDF and the training CDF
  (through the manifest's 21 quantiles), with the asymptotic two-sample p-value using
  ``n_eff = n·m/(n+m)`` (``m`` = training rows).

Features with few distinct values (ISO zone, dominant frequency at steady speed) have tied
quantiles. A value ``v`` that the quantiles hit at levels ``lo..hi`` is a point mass: the training
CDF jumps from ``lo`` to ``hi`` at ``v`` (a step, linear between distinct values). PSI merges
identical decile edges into one bin ``[v, next)`` whose expected share is the CDF mass it covers
(``lo(next) - lo(v)``), and splits a point mass at the top edge into ``{v}`` / ``> v`` so a move
above it still shows. For a continuous feature both statistics are unchanged.

Feature vectors of consecutive windows are not independent draws: they overlap, and the
machine's load and speed wander over tens of seconds. A few seconds of vectors then cover only
part of the training distribution and PSI reads a large "drift" on healthy data (the default
run read PSI ~2 after 15 s). So the recent sample spans a stretch of *time* (``window``, default
10 min, several slow cycles) and is thinned to at most ``max_samples`` vectors spread evenly over
it (nearly independent draws, and PSI's small-sample bias ``~(bins-1)/n`` stays small); nothing
is evaluated before the window spans its full length, and then every ``every`` seconds.

The source's drift value is the maximum over features of the configured statistic. Past
``threshold`` a ``drift_detected`` event is raised (once); ``drift_cleared`` when it falls below
``clear_ratio * threshold``. A feature constant in training is compared as two bins (its
training value / anything else): IsolationForest never splits on it, so drift is the only place
its change shows.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.models.bundle import Manifest
from edge_agent.records import Event
from edge_agent.settings import Duration, Model

_EPS = 1e-4


class DriftConfig(Model):
    """``[pipelines.<id>.drift]``."""

    enabled: bool = True
    method: Literal["psi", "ks"] = "psi"
    window: Duration = Field(600.0, gt=0)
    """Span of recent data compared (stream time, window ends). Make it cover several of the
    machine's slow cycles (load, speed, temperature)."""
    max_samples: int = Field(400, ge=50)
    """The recent sample is thinned to at most this many vectors, one per
    ``window / max_samples`` seconds. PSI over 10 bins has a small-sample bias of about
    9/n per feature (max over 20 features ~ 2.5x that), so keep it >= 200 for a 0.25
    threshold."""
    every: Duration = Field(10.0, gt=0)
    """Evaluate every this many seconds once the window is full."""
    threshold: float = Field(0.25, gt=0)
    """PSI (0.1 moderate, 0.25 significant) or KS distance D (0..1)."""
    clear_ratio: float = Field(0.8, gt=0, le=1)


@dataclass(frozen=True, slots=True)
class DriftStatus:
    psi: float
    ks: float
    ks_pvalue: float
    feature: str
    """The feature with the largest value of the configured statistic."""
    n: int
    per_feature: Mapping[str, tuple[float, float]]
    """name -> (psi, ks)."""


def kolmogorov(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (``scipy.special.kolmogorov``, within ~1e-13,
    without importing scipy.special: tens of MB for one function). Below x = 1 the Jacobi
    theta form of the CDF converges in a few terms, above it the alternating series of the
    survival function does."""
    if math.isnan(x):
        return math.nan
    if x < 0.04:  # 1 - P(K <= x) with P(K <= x) < 1e-300
        return 1.0
    if x < 1.0:
        c, cdf, k = -math.pi ** 2 / (8.0 * x * x), 0.0, 1
        while (t := math.exp(c * (2 * k - 1) ** 2)) > 1e-20 * cdf or k == 1:
            cdf += t
            k += 1
        return 1.0 - math.sqrt(2.0 * math.pi) / x * cdf
    c, sf, k = -2.0 * x * x, 0.0, 1
    while (t := math.exp(c * k * k)) > 1e-20 * abs(sf) or k == 1:
        sf += t if k % 2 else -t
        k += 1
    return max(0.0, 2.0 * sf)


def psi(recent: npt.NDArray[np.float64], edges: npt.NDArray[np.float64],
        expected: npt.NDArray[np.float64]) -> float:
    """PSI of ``recent`` against bins with interior ``edges`` and ``expected`` shares."""
    idx = np.searchsorted(edges, recent, side="right")
    counts = np.bincount(idx, minlength=len(expected)).astype(np.float64)
    return psi_shares(counts / max(len(recent), 1), expected)


def psi_shares(actual: npt.NDArray[np.float64], expected: npt.NDArray[np.float64]) -> float:
    """PSI from bin shares (each clipped at 1e-4 so empty bins stay finite)."""
    a = np.maximum(actual, _EPS)
    e = np.maximum(expected, _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_distance(recent: npt.NDArray[np.float64], quantiles: npt.NDArray[np.float64],
                levels: npt.NDArray[np.float64]) -> float:
    """sup |F_recent - F_train|, F_train through (quantiles, levels) with steps at tied values.

    Exact: both CDFs are compared just left of and at every recent value and every distinct
    training quantile (between those points one is constant and the other monotone).
    """
    x = np.sort(np.asarray(recent, dtype=np.float64))
    n = len(x)
    if n == 0:
        return 0.0
    v, lo, hi = _steps(quantiles, levels)
    pts = np.union1d(x, v)
    at = np.abs(np.searchsorted(x, pts, side="right") / n - train_cdf(pts, v, lo, hi))
    left = np.abs(np.searchsorted(x, pts, side="left") / n
                  - train_cdf(pts, v, lo, hi, left=True))
    return float(max(np.max(at), np.max(left)))


def _steps(quantiles: npt.NDArray[np.float64], levels: npt.NDArray[np.float64]
           ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Distinct quantile values with the lowest and highest level at which each occurs."""
    q = np.asarray(quantiles, dtype=np.float64)
    lv = np.asarray(levels, dtype=np.float64)
    v, first = np.unique(q, return_index=True)
    _, last_rev = np.unique(q[::-1], return_index=True)
    last = len(q) - 1 - last_rev
    return v, lv[first], lv[last]


def train_cdf(x: npt.NDArray[np.float64], v: npt.NDArray[np.float64],
              lo: npt.NDArray[np.float64], hi: npt.NDArray[np.float64],
              *, left: bool = False) -> npt.NDArray[np.float64]:
    """Training CDF F(x) (or F(x-) if ``left``): 0 below, 1 above, jump lo->hi at each ``v``,
    linear from (v_j, hi_j) to (v_j+1, lo_j+1) in between."""
    x = np.asarray(x, dtype=np.float64)
    j = np.searchsorted(v, x, side="left" if left else "right") - 1
    out = np.empty_like(x)
    below, above = j < 0, j >= len(v) - 1
    out[below] = 0.0
    out[above] = 1.0
    mid = ~(below | above)
    if len(v) >= 2 and mid.any():
        jm = j[mid]
        t = (x[mid] - v[jm]) / (v[jm + 1] - v[jm])
        out[mid] = hi[jm] + (lo[jm + 1] - hi[jm]) * t
    if not left:
        out[x == v[-1]] = hi[-1]
    return out


def decile_bins(quantiles: npt.NDArray[np.float64], levels: npt.NDArray[np.float64]
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """PSI bin edges (for :func:`psi`) and expected shares of one feature.

    Edges are the distinct decile quantiles; the expected share of ``[e_i, e_i+1)`` is
    ``lo(e_i+1) - lo(e_i)`` (the CDF mass, so merged identical edges add up their shares and a
    point mass lands in the bin its value falls in). A point mass at the top edge gets its own
    bin so values above it are counted apart.
    """
    v, lo, hi = _steps(quantiles, levels)
    deciles = [float(q) for q, lv in zip(quantiles, levels, strict=True)
               if 0 < lv < 1 and round(float(lv) * 10, 6) % 1 == 0]
    edges = np.unique(np.asarray(deciles, dtype=np.float64))
    k = np.searchsorted(v, edges)
    cuts = list(lo[k])
    if len(edges) and hi[k[-1]] > lo[k[-1]]:
        edges = np.append(edges, np.nextafter(edges[-1], math.inf))
        cuts.append(float(hi[k[-1]]))
    expected = np.diff(np.concatenate([[0.0], np.asarray(cuts, dtype=np.float64), [1.0]]))
    return edges, np.clip(expected, 0.0, 1.0)


class DriftMonitor:
    """Rolling drift check for one source against one model's training summary."""

    def __init__(self, source_id: str, manifest: Manifest, cfg: DriftConfig) -> None:
        self.source_id = source_id
        self.cfg = cfg
        self.names: tuple[str, ...] = manifest.names
        self.model = (manifest.name, manifest.version)
        self.m = max(manifest.n_training_rows, 1)
        levels = np.asarray(manifest.quantile_levels, dtype=np.float64)
        self.levels = levels
        self.q = np.array([manifest.training[n].quantiles for n in self.names], dtype=np.float64)
        self.bins = [decile_bins(self.q[j], levels) for j in range(len(self.names))]
        self.usable = (self.q[:, -1] - self.q[:, 0]) > 0
        self._buf: deque[tuple[float, npt.NDArray[np.float64]]] = deque()
        self._last_eval: float | None = None
        self._start: float | None = None
        self._prev = -math.inf
        self._spacing = float(cfg.window) / cfg.max_samples
        self.active = False
        self.status: DriftStatus | None = None

    def value(self) -> float | None:
        """The current drift value (configured statistic, max over features) for the metric."""
        if self.status is None:
            return None
        return self.status.psi if self.cfg.method == "psi" else self.status.ks

    def update(self, values: Mapping[str, float] | Sequence[float] | npt.NDArray[np.float64],
               timestamp: float) -> Event | None:
        """Add one feature vector (dict by name, or a row in model order); maybe an event."""
        if isinstance(values, Mapping):
            row = np.array([values.get(n, math.nan) for n in self.names], dtype=np.float64)
        else:
            row = np.asarray(values, dtype=np.float64).reshape(-1)
            if row.shape[0] != len(self.names):
                raise ValueError(f"drift row has {row.shape[0]} values, model has "
                                 f"{len(self.names)} features")
        if not np.isfinite(row).all():
            return None
        if self._start is None or timestamp - self._prev > self.cfg.window / 10:
            self._start = timestamp  # first vector, or after a gap: refill before judging
        self._prev = timestamp
        if not self._buf or timestamp - self._buf[-1][0] >= self._spacing * (1 - 1e-9):
            self._buf.append((timestamp, row))
        while self._buf and self._buf[0][0] <= timestamp - self.cfg.window:
            self._buf.popleft()
        if timestamp - self._start < self.cfg.window * (1 - 1e-9):
            return None  # the recent sample does not span its window (yet, or after a gap)
        if self._last_eval is not None and timestamp - self._last_eval < self.cfg.every:
            return None
        self._last_eval = timestamp
        self.status = self.evaluate()
        return self._transition(timestamp)

    def evaluate(self) -> DriftStatus:
        R = np.array([r for _, r in self._buf], dtype=np.float64)
        n = len(R)
        per: dict[str, tuple[float, float]] = {}
        for j, name in enumerate(self.names):
            if not self.usable[j]:
                # Constant in training: two bins, "the training value" and "anything else".
                moved = float(np.mean(R[:, j] != self.q[j, 0]))
                per[name] = (psi_shares(np.array([1.0 - moved, moved]), np.array([1.0, 0.0])),
                             moved)
                continue
            per[name] = (psi(R[:, j], *self.bins[j]),
                         ks_distance(R[:, j], self.q[j], self.levels))
        if not per:
            return DriftStatus(0.0, 0.0, 1.0, "", n, per)
        k = 0 if self.cfg.method == "psi" else 1
        worst = max(per, key=lambda nm: per[nm][k])
        ks = max(v[1] for v in per.values())
        n_eff = n * self.m / (n + self.m)
        p = float(kolmogorov(math.sqrt(n_eff) * ks))
        return DriftStatus(max(v[0] for v in per.values()), ks, p, worst, n, per)

    def _transition(self, timestamp: float) -> Event | None:
        v = self.value()
        if v is None or self.status is None:
            return None
        st = self.status
        details = {"method": self.cfg.method, "value": v, "threshold": self.cfg.threshold,
                   "feature": st.feature, "psi": st.psi, "ks": st.ks,
                   "ks_pvalue": st.ks_pvalue, "window": st.n,
                   "model": {"name": self.model[0], "version": self.model[1]}}
        if not self.active and v > self.cfg.threshold:
            self.active = True
            return Event("drift_detected", self.source_id, timestamp, "warning", details)
        if self.active and v < self.cfg.threshold * self.cfg.clear_ratio:
            self.active = False
            return Event("drift_cleared", self.source_id, timestamp, "info", details)
        return None
