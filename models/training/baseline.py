"""Baseline learning: fit scaler + IsolationForest on an asset's own features.

:func:`fit_baseline` is the one entry point (used by commissioning mode, ``edge-agent models
train`` and the default-models script ``tests/tools/train_defaults.py``): it drops non-finite
rows, fits ``StandardScaler`` + ``IsolationForest``, exports through the same verified path as
``models export`` and picks the threshold as a quantile of the training scores. Every failure is
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
from edge_agent.models.commissioning import MIN_ROWS
from edge_agent.models.training.export import export_bundle


def fit_baseline(X: npt.ArrayLike, names: Sequence[str], contract: Mapping[str, object],
                 out_dir: Path | str, *, name: str, quantile: float = 0.995, seed: int = 0,
                 n_estimators: int = 100, max_samples: int | str = "auto",
                 version: str | None = None, kind: str | None = None,
                 units: Mapping[str, str] | None = None,
                 source: Mapping[str, Any] | None = None, holdout_fraction: float = 0.2,
                 private_key: bytes | None = None) -> Path:
    """Fit ``StandardScaler`` + ``IsolationForest`` on ``X`` and write a verified bundle.

    ``out_dir`` is the bundle's own path: a directory (replaced atomically if it exists) or an
    archive name ending in .tar.gz/.zip. The threshold is the ``quantile`` of the training
    rows' scores. The last ``holdout_fraction`` of rows is kept out of fitting and used, with
    synthetic out-of-range rows, to check ONNX against sklearn. Returns the bundle path.
    """
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != len(names):
        raise TrainingError(f"feature matrix must be (n, {len(names)}), got {A.shape}")
    ok: npt.NDArray[np.bool_] = np.asarray(np.isfinite(A).all(axis=1))
    A = A[ok]
    if len(A) < MIN_ROWS:
        raise TrainingError(f"baseline needs at least {MIN_ROWS} finite feature vectors, "
                            f"got {len(A)} (of {len(ok)})")
    if not 0.5 <= quantile < 1.0:
        raise TrainingError("threshold quantile must be in [0.5, 1)")
    n_hold = int(len(A) * holdout_fraction) if len(A) >= 5 * MIN_ROWS else 0
    fit_rows, hold_rows = (A[:-n_hold], A[-n_hold:]) if n_hold else (A, A)
    try:
        pipe = Pipeline([
            ("scaler", StandardScaler()),
            ("forest", IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                                       random_state=seed)),
        ]).fit(fit_rows)
    except ValueError as exc:  # sklearn's parameter and data checks
        raise TrainingError(f"baseline fit failed: {exc}") from exc
    src: dict[str, Any] = {"kind": "baseline", "rows": len(A), "fit_rows": len(fit_rows),
                           "dropped_non_finite": int((~ok).sum()), "seed": seed,
                           "n_estimators": n_estimators}
    src.update(source or {})
    return export_bundle(pipe, fit_rows, names, contract, out_dir, name=name, version=version,
                         kind=kind, units=units, quantile=quantile, X_holdout=hold_rows,
                         source=src, seed=seed, private_key=private_key)
