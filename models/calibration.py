"""Thresholds from held-out normal data for a stated false-alarm rate per hour.

A baseline (commissioning, ``edge-agent models train``) is split in time order:

* the first ``FIT_FRACTION`` (60 %) fits the model,
* the next ``CAL_FRACTION`` (20 %) **calibrates** the threshold (scores the model never saw),
* the last 20 % **checks** it: the threshold from the calibration part must hold on the check
  part (at most ``MAX_CHECK_EXCEEDANCE`` of its decisions over) or the baseline is refused as
  unstable (it does not cover enough of the machine's operation: load, speed, temperature
  cycles). The bundle's final threshold is then calibrated on both held-out parts.

**Decisions.** The threshold applies to a *decision*: one window's score, or the mean score over
``decision_seconds`` of windows (sound: a clip of seconds rather than single windows). The chain
averages scores over the same span before comparing (the manifest says which span).

**False alarms per hour.** An alarm needs the decision over threshold for the alerts'
``raise_after`` (``persistence``); taking one trial per ``max(persistence, decision)`` seconds,
a target of ``F`` false alarms per hour allows a per-decision exceedance probability
``p = F * span / 3600``. The threshold is the Gaussian ``1 - p`` quantile of the held-out
decisions (mean + z·sd), never below the highest held-out decision. The rate is an upper bound
under that model (several consecutive decisions must all be over).

**Minimum size** ``MIN_ROWS`` (200 vectors): measured on the simulated pump's healthy running
(baselines of 48 … 768 consecutive windows, six disjoint stretches each, exceedance of the
threshold on 100 s of later healthy data): below ~200 windows the mean exceedance was 4-7 %
(worst 10-33 %); from ~200 on it fell under 1 % when the stretch covered the slow load cycles.
The stability check above catches a longer baseline that still misses them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import TrainingError

F64 = npt.NDArray[np.float64]

MIN_ROWS = 200
FIT_FRACTION = 0.6
CAL_FRACTION = 0.2
MIN_DECISIONS = 20
MAX_CHECK_EXCEEDANCE = 0.02
DEFAULT_FALSE_ALARMS_PER_HOUR = 0.1
DEFAULT_PERSISTENCE_S = 2.0   # the alerts' default raise_after
DEFAULT_MIN_SD = 2.0
"""Band alarm's floor of a feature's baseline deviation, in dB for band levels: a level moving
less than this between recording sessions is not a machine change (engineering-grade sound
measurements repeat within about 1.5-2 dB)."""


def split(n: int) -> tuple[int, int]:
    """End indices of the fit and calibration parts of ``n`` rows in time order."""
    a = round(n * FIT_FRACTION)
    b = a + round(n * CAL_FRACTION)
    return a, b


def decisions(scores: F64, per_decision: int) -> F64:
    """Rolling means of ``per_decision`` consecutive window scores (the windows themselves for
    1)."""
    s = np.asarray(scores, dtype=np.float64)
    if per_decision <= 1:
        return s
    c = np.cumsum(np.r_[0.0, s])
    return (c[per_decision:] - c[:-per_decision]) / per_decision


@dataclass(frozen=True)
class Calibration:
    threshold: float
    info: dict[str, Any]


def per_decision(window_period: float, decision_seconds: float) -> int:
    return max(1, round(decision_seconds / window_period)) if decision_seconds > 0 else 1


def calibrate(scores: F64, *, window_period: float, false_alarms_per_hour: float,
              decision_seconds: float = 0.0,
              persistence: float = DEFAULT_PERSISTENCE_S) -> Calibration:
    """The threshold on held-out normal ``scores`` (time order) for the target rate."""
    if not (window_period > 0 and math.isfinite(window_period)):
        raise TrainingError("calibration needs the window period (hop / sample rate)")
    if not false_alarms_per_hour > 0:
        raise TrainingError("false_alarms_per_hour must be > 0")
    k = per_decision(window_period, decision_seconds)
    d = decisions(scores, k)
    independent = len(scores) // k
    if len(d) < MIN_DECISIONS or independent < 3:
        raise TrainingError(
            f"calibration has {len(scores)} held-out windows: too few for decisions over "
            f"{decision_seconds:g} s ({k} windows each); collect a longer baseline")
    span = max(persistence, k * window_period)
    p = min(0.5, false_alarms_per_hour * span / 3600.0)
    z = -NormalDist().inv_cdf(p)  # = scipy.stats.norm.isf(p), without importing scipy.stats
    mu, sd = float(d.mean()), float(d.std(ddof=1))
    thr = max(mu + z * sd, float(d.max()))
    return Calibration(thr, {
        "rule": "held-out normal decisions: max(mean + z*sd, highest)",
        "false_alarms_per_hour": false_alarms_per_hour, "decision_seconds": k * window_period
        if k > 1 else 0.0, "windows_per_decision": k, "persistence_s": persistence,
        "exceedance_per_decision": p, "z": round(z, 3), "calibration_windows": len(scores),
        "calibration_seconds": round(len(scores) * window_period, 3),
        "window_period_s": window_period})


def check(cal: Calibration, check_scores: F64) -> float:
    """Share of the check part's decisions over the calibration part's threshold."""
    d = decisions(check_scores, int(cal.info["windows_per_decision"]))
    return float(np.mean(d > cal.threshold)) if len(d) else 1.0


class RollingMean:
    """Mean of the scores of the last ``seconds`` (window ends), for decisions over a span."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._buf: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def add(self, timestamp: float, score: float) -> float:
        self._buf.append((timestamp, score))
        self._sum += score
        while self._buf and self._buf[0][0] <= timestamp - self.seconds:
            self._sum -= self._buf.popleft()[1]
        return self._sum / len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._sum = 0.0
