"""Baseline learning: fit a model on an asset's own features and calibrate its threshold.

:func:`fit_baseline` is the one entry point (used by commissioning mode, ``edge-agent models
train`` and the default-models script ``tests/tools/train_defaults.py``). It drops non-finite
rows, fits the model and sets the threshold on normal data the model did not see, for a stated
false-alarm rate per hour (:mod:`edge_agent.models.calibration`), then exports through the same
verified path as ``models export``:

* ``estimator="isolation_forest"`` (default): ``StandardScaler`` + ``IsolationForest``; the rows
  are split in time order, fit 60 % / calibrate 20 % / check 20 %.
* ``estimator="band_alarm"`` (:mod:`.bandalarm`, for band levels): cross-fitted in time order,
  ``CROSS_FOLDS`` consecutive folds, each scored by a band alarm fit on the others; those
  out-of-fold scores calibrate, and the final model is fit on every row. A baseline of a few
  recording sessions keeps them all in the model, and the threshold still comes from sessions
  the scoring model did not see.

The manifest's ``score.calibration`` records the rule, the target rate, the decision span and
the calibration size. Every failure is a :class:`~edge_agent.errors.TrainingError`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from edge_agent.errors import TrainingError
from edge_agent.models.calibration import (
    DEFAULT_FALSE_ALARMS_PER_HOUR,
    DEFAULT_MIN_SD,
    DEFAULT_PERSISTENCE_S,
    MAX_CHECK_EXCEEDANCE,
    MIN_ROWS,
    calibrate,
    check,
    split,
)
from edge_agent.models.training.bandalarm import BandAlarm
from edge_agent.models.training.export import export_bundle

ESTIMATORS = ("isolation_forest", "band_alarm")
CROSS_FOLDS = 5

LEGACY_MIN_ROWS = 32
"""Floor of the old quantile rule (``--quantile``, kept for comparisons); commissioning cannot
use it (``min_windows`` >= 200)."""


def window_period(contract: Mapping[str, object]) -> float | None:
    """Seconds between consecutive windows (hop / sample rate) from an extractor contract."""
    hop, rate = contract.get("hop"), contract.get("sample_rate")
    if isinstance(hop, int | float) and isinstance(rate, int | float) and rate > 0:
        return float(hop) / float(rate)
    return None


def fit_baseline(X: npt.ArrayLike, names: Sequence[str], contract: Mapping[str, object],
                 out_dir: Path | str, *, name: str, quantile: float | None = None,
                 false_alarms_per_hour: float = DEFAULT_FALSE_ALARMS_PER_HOUR,
                 decision_seconds: float = 0.0, persistence: float = DEFAULT_PERSISTENCE_S,
                 period: float | None = None, seed: int = 0,
                 n_estimators: int = 100, max_samples: int | str = "auto",
                 version: str | None = None, kind: str | None = None,
                 units: Mapping[str, str] | None = None,
                 source: Mapping[str, Any] | None = None, holdout_fraction: float = 0.2,
                 private_key: bytes | None = None, estimator: str = "isolation_forest",
                 min_sd: float = DEFAULT_MIN_SD) -> Path:
    """Fit ``StandardScaler`` + ``IsolationForest`` (or the band alarm, ``min_sd`` its deviation
    floor) on ``X`` (rows in time order) and write a
    verified bundle; returns its path.

    ``out_dir`` is the bundle's own path: a directory (replaced atomically if it exists) or an
    archive name ending in .tar.gz/.zip. The threshold is calibrated on held-out rows for
    ``false_alarms_per_hour`` with decisions over ``decision_seconds`` (0: single windows) and
    the alerts' ``persistence`` (raise_after); ``period`` (seconds between windows) defaults to
    the contract's hop / sample rate. ``quantile`` instead keeps the old rule (that quantile of
    the fit rows' scores; it does not transfer to new data) for comparisons; only then the
    last ``holdout_fraction`` of the rows is kept out of fitting (for the ONNX check).
    """
    A, dropped = _usable_rows(X, len(names), quantile)
    per = period if period is not None else window_period(contract)
    if quantile is None and per is None:
        raise TrainingError("the contract names no hop and sample_rate: give the window "
                            "period to calibrate the threshold")
    a, b = split(len(A)) if quantile is None else (len(A) - int(len(A) * holdout_fraction),) * 2
    threshold: float | None = None
    calibration: dict[str, Any] | None = None
    if estimator == "band_alarm" and quantile is None and per is not None:
        a = b = len(A)  # cross-fitted: every row fits the final model and calibrates it
        pipe, threshold, calibration = _cross_fitted(A, per, false_alarms_per_hour,
                                                     decision_seconds, persistence, min_sd)
    else:
        pipe = _fitted(estimator, A[:a], n_estimators, max_samples, seed, min_sd)
        if quantile is None and per is not None:
            threshold, calibration = _calibrated(pipe, A[a:b], A[b:], per, false_alarms_per_hour,
                                                 decision_seconds, persistence)
    src = _source(len(A), a, b, dropped, quantile, seed, estimator,
                  {"n_estimators": n_estimators} if estimator == "isolation_forest"
                  else {"min_sd": min_sd})
    src.update(source or {})
    return export_bundle(pipe, A[:a], names, contract, out_dir, name=name, version=version,
                         kind=kind, units=units, threshold=threshold,
                         quantile=quantile if quantile is not None else 0.995,
                         X_holdout=A[a:] if a < len(A) else A, source=src, seed=seed,
                         private_key=private_key, calibration=calibration)


def _usable_rows(X: npt.ArrayLike, n_features: int, quantile: float | None
                 ) -> tuple[npt.NDArray[np.float64], int]:
    """The rows a baseline learns from (the finite ones) and how many non-finite rows were
    dropped; a :class:`TrainingError` for a matrix of the wrong shape, too few finite rows for
    the threshold rule, or a legacy ``quantile`` out of range."""
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != n_features:
        raise TrainingError(f"feature matrix must be (n, {n_features}), got {A.shape}")
    ok: npt.NDArray[np.bool_] = np.asarray(np.isfinite(A).all(axis=1))
    A = A[ok]
    floor = MIN_ROWS if quantile is None else LEGACY_MIN_ROWS
    if len(A) < floor:
        raise TrainingError(
            f"baseline needs at least {floor} finite feature vectors, got {len(A)} (of "
            f"{len(ok)}): below that the threshold does not hold on new normal data; collect "
            f"longer (covering the machine's load and speed cycles)")
    if quantile is not None and not 0.5 <= quantile < 1.0:
        raise TrainingError("threshold quantile must be in [0.5, 1)")
    return A, int((~ok).sum())


def _source(n: int, a: int, b: int, dropped: int, quantile: float | None, seed: int,
            estimator: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if a == n and quantile is None:
        how = (f"time order, {CROSS_FOLDS} consecutive folds: each fold scored by a model fit "
               f"on the others calibrates; the last fold checks; the model fits every row")
    elif quantile is None:
        how = "time order: fit 60 %, calibrate 20 %, check 20 %"
    else:
        how = "time order: fit, then held out"
    return {"kind": "baseline", "rows": n, "fit_rows": a, "calibration_rows": b - a if a < n
            else n, "check_rows": n - b, "split": how, "dropped_non_finite": dropped,
            "seed": seed, "estimator": estimator, **params}


def _cross_fitted(A: npt.NDArray[np.float64], per: float, far: float, decision_seconds: float,
                  persistence: float, min_sd: float) -> tuple[BandAlarm, float, dict[str, Any]]:
    """Band alarm calibrated on out-of-fold scores (a session the model never saw scores as new
    normal data does: the spread between recording sessions is what a threshold must hold).

    No stability refusal here: the final threshold is at least every out-of-fold decision, so a
    fold can only cross a threshold learned without it if it holds the highest decisions of
    all; the mean share of a fold's decisions over the threshold of the others is recorded as
    ``new_session_exceedance`` (on the MIMII fan's 220 baselines of 9 clips it did not predict
    which baselines later false-alarm)."""
    edges = np.linspace(0, len(A), CROSS_FOLDS + 1).astype(int)
    oof = np.empty(len(A))
    for lo, hi in itertools.pairwise(edges):
        rest = np.r_[A[:lo], A[hi:]]
        oof[lo:hi] = _scores(BandAlarm(min_sd).fit(rest), A[lo:hi])
    kw = {"window_period": per, "false_alarms_per_hour": far,
          "decision_seconds": decision_seconds, "persistence": persistence}
    over = float(np.mean([check(calibrate(np.r_[oof[:lo], oof[hi:]], **kw), oof[lo:hi])
                          for lo, hi in itertools.pairwise(edges)]))
    final = calibrate(oof, **kw)
    return BandAlarm(min_sd).fit(A), final.threshold, {**final.info,
                                                       "new_session_exceedance": over}


def _refuse_unstable(over: float) -> None:
    if over > MAX_CHECK_EXCEEDANCE:
        raise TrainingError(
            f"baseline is not stable: {over:.1%} of the last 20 % of it is over the threshold "
            f"calibrated on the 20 % before (at most {MAX_CHECK_EXCEEDANCE:.0%}); it does not "
            f"cover enough of the machine's normal operation: collect longer")


def _fitted(estimator: str, rows: npt.NDArray[np.float64], n_estimators: int,
            max_samples: int | str, seed: int, min_sd: float) -> Pipeline | BandAlarm:
    if estimator == "band_alarm":
        return BandAlarm(min_sd).fit(rows)
    if estimator != "isolation_forest":
        raise TrainingError(f"estimator must be one of {', '.join(ESTIMATORS)}, got "
                            f"{estimator!r}")
    try:
        return Pipeline([
            ("scaler", StandardScaler()),
            ("forest", IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                                       random_state=seed)),
        ]).fit(rows)
    except ValueError as exc:  # sklearn's parameter and data checks
        raise TrainingError(f"baseline fit failed: {exc}") from exc


def _scores(pipe: Pipeline | BandAlarm, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # float32 as the edge feeds the model; -score_samples as the bundle's score
    s: npt.NDArray[np.float64] = -pipe.score_samples(X.astype(np.float32).astype(np.float64))
    return s


def _calibrated(pipe: Pipeline | BandAlarm, cal_rows: npt.NDArray[np.float64],
                check_rows: npt.NDArray[np.float64], per: float, far: float,
                decision_seconds: float, persistence: float) -> tuple[float, dict[str, Any]]:
    s_cal, s_check = _scores(pipe, cal_rows), _scores(pipe, check_rows)
    first = calibrate(s_cal, window_period=per, false_alarms_per_hour=far,
                      decision_seconds=decision_seconds, persistence=persistence)
    over = check(first, s_check)
    _refuse_unstable(over)
    final = calibrate(np.r_[s_cal, s_check], window_period=per, false_alarms_per_hour=far,
                      decision_seconds=decision_seconds, persistence=persistence)
    return final.threshold, {**final.info, "check_exceedance": over}
