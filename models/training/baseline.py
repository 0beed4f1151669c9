"""Baseline learning: fit scaler + IsolationForest on an asset's own features.

:func:`fit_baseline` is the one entry point (used by commissioning mode, ``edge-agent models
train`` and the default-models script ``tests/tools/train_defaults.py``): it drops non-finite
rows, splits the rest in time order (fit 60 % / calibrate 20 % / check 20 %, see
:mod:`edge_agent.models.calibration`), fits ``StandardScaler`` + ``IsolationForest`` on the fit
part, sets the threshold on the held-out parts for a stated false-alarm rate per hour, and
exports through the same verified path as ``models export``. The manifest's ``score.calibration``
records the rule, the target rate, the decision span and the calibration size. Every failure is
a :class:`~edge_agent.errors.TrainingError`.
"""

from __future__ import annotations

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
    DEFAULT_PERSISTENCE_S,
    MAX_CHECK_EXCEEDANCE,
    MIN_ROWS,
    calibrate,
    check,
    split,
)
from edge_agent.models.training.export import export_bundle

LEGACY_MIN_ROWS = 32
"""Floor of the old quantile rule (kept to reproduce the shipped CWRU demonstration bundle,
trained on 5 s of healthy data); commissioning cannot use it (``min_windows`` >= 200)."""


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
                 private_key: bytes | None = None) -> Path:
    """Fit ``StandardScaler`` + ``IsolationForest`` on ``X`` (rows in time order) and write a
    verified bundle; returns its path.

    ``out_dir`` is the bundle's own path: a directory (replaced atomically if it exists) or an
    archive name ending in .tar.gz/.zip. The threshold is calibrated on held-out rows for
    ``false_alarms_per_hour`` with decisions over ``decision_seconds`` (0: single windows) and
    the alerts' ``persistence`` (raise_after); ``period`` (seconds between windows) defaults to
    the contract's hop / sample rate. ``quantile`` instead keeps the old rule (that quantile of
    the fit rows' scores; it does not transfer to new data) for comparisons; only then the
    last ``holdout_fraction`` of the rows is kept out of fitting (for the ONNX check).
    """
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != len(names):
        raise TrainingError(f"feature matrix must be (n, {len(names)}), got {A.shape}")
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
    per = period if period is not None else window_period(contract)
    a, b = split(len(A)) if quantile is None else (len(A) - int(len(A) * holdout_fraction),) * 2
    fit_rows, cal_rows, check_rows = A[:a], A[a:b], A[b:]
    try:
        pipe = Pipeline([
            ("scaler", StandardScaler()),
            ("forest", IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                                       random_state=seed)),
        ]).fit(fit_rows)
    except ValueError as exc:  # sklearn's parameter and data checks
        raise TrainingError(f"baseline fit failed: {exc}") from exc
    src: dict[str, Any] = {"kind": "baseline", "rows": len(A), "fit_rows": len(fit_rows),
                           "calibration_rows": len(cal_rows), "check_rows": len(check_rows),
                           "split": "time order: fit 60 %, calibrate 20 %, check 20 %"
                           if quantile is None else "time order: fit, then held out",
                           "dropped_non_finite": int((~ok).sum()), "seed": seed,
                           "n_estimators": n_estimators}
    threshold: float | None = None
    calibration: dict[str, Any] | None = None
    if quantile is None:
        if per is None:
            raise TrainingError("the contract names no hop and sample_rate: give the window "
                                "period to calibrate the threshold")
        threshold, calibration = _calibrated(pipe, cal_rows, check_rows, per,
                                             false_alarms_per_hour, decision_seconds, persistence)
    src.update(source or {})
    return export_bundle(pipe, fit_rows, names, contract, out_dir, name=name, version=version,
                         kind=kind, units=units, threshold=threshold,
                         quantile=quantile if quantile is not None else 0.995,
                         X_holdout=A[a:], source=src, seed=seed, private_key=private_key,
                         calibration=calibration)


def _scores(pipe: Pipeline, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # float32 as the edge feeds the model; -score_samples as the bundle's score
    s: npt.NDArray[np.float64] = -pipe.score_samples(X.astype(np.float32).astype(np.float64))
    return s


def _calibrated(pipe: Pipeline, cal_rows: npt.NDArray[np.float64],
                check_rows: npt.NDArray[np.float64], per: float, far: float,
                decision_seconds: float, persistence: float) -> tuple[float, dict[str, Any]]:
    s_cal, s_check = _scores(pipe, cal_rows), _scores(pipe, check_rows)
    first = calibrate(s_cal, window_period=per, false_alarms_per_hour=far,
                      decision_seconds=decision_seconds, persistence=persistence)
    over = check(first, s_check)
    if over > MAX_CHECK_EXCEEDANCE:
        raise TrainingError(
            f"baseline is not stable: {over:.1%} of the last 20 % of it is over the threshold "
            f"calibrated on the 20 % before (at most {MAX_CHECK_EXCEEDANCE:.0%}); it does not "
            f"cover enough of the machine's normal operation: collect longer")
    final = calibrate(np.r_[s_cal, s_check], window_period=per, false_alarms_per_hour=far,
                      decision_seconds=decision_seconds, persistence=persistence)
    return final.threshold, {**final.info, "check_exceedance": over}
