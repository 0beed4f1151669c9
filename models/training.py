"""Baseline learning on site: fit scaler + IsolationForest on this asset's own features.

:func:`fit_baseline` is the one entry point (used by commissioning mode, ``edge-agent models
train`` and ``train_defaults``): it drops non-finite rows, fits ``StandardScaler`` +
``IsolationForest``, exports through the same verified path as ``models export`` and picks the
threshold as a quantile of the training scores. sklearn is imported inside the functions only.

:class:`Commissioner` collects feature vectors of one pipeline for a configured period or count;
the agent runs ``fit`` in a worker thread, loads the bundle and raises the event built by
:func:`commissioning_event`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.models.bundle import ModelError
from edge_agent.records import Event, FeatureVector
from edge_agent.settings import Duration, Model

MIN_ROWS = 32


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
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from edge_agent.models.export import export_bundle

    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != len(names):
        raise ModelError(f"feature matrix must be (n, {len(names)}), got {A.shape}")
    ok: npt.NDArray[np.bool_] = np.asarray(np.isfinite(A).all(axis=1))
    A = A[ok]
    if len(A) < MIN_ROWS:
        raise ModelError(f"baseline needs at least {MIN_ROWS} finite feature vectors, "
                         f"got {len(A)} (of {len(ok)})")
    if not 0.5 <= quantile < 1.0:
        raise ModelError("threshold quantile must be in [0.5, 1)")
    n_hold = int(len(A) * holdout_fraction) if len(A) >= 5 * MIN_ROWS else 0
    fit_rows, hold_rows = (A[:-n_hold], A[-n_hold:]) if n_hold else (A, A)
    pipe = Pipeline([
        ("scaler", StandardScaler()),
        ("forest", IsolationForest(n_estimators=n_estimators, max_samples=max_samples,
                                   random_state=seed)),
    ]).fit(fit_rows)
    src: dict[str, Any] = {"kind": "baseline", "rows": len(A), "fit_rows": len(fit_rows),
                           "dropped_non_finite": int((~ok).sum()), "seed": seed,
                           "n_estimators": n_estimators}
    src.update(source or {})
    return export_bundle(pipe, fit_rows, names, contract, out_dir, name=name, version=version,
                         kind=kind, units=units, quantile=quantile, X_holdout=hold_rows,
                         source=src, seed=seed, private_key=private_key)


class CommissioningConfig(Model):
    """``[pipelines.<id>.commissioning]``: learn this asset's baseline before scoring."""

    enabled: bool = False
    duration: Duration = Field(3600.0, gt=0)
    """Collect feature vectors for this long (stream time: window ends)."""
    max_windows: int = Field(20000, ge=MIN_ROWS)
    """... or until this many vectors have been collected, whichever comes first."""
    min_windows: int = Field(200, ge=MIN_ROWS)
    quantile: float = Field(0.995, ge=0.5, lt=1.0)
    n_estimators: int = Field(100, ge=10, le=1000)
    seed: int = 0
    out_dir: str = "/var/lib/edge-agent/models"

    def problems(self) -> list[tuple[str, str]]:
        if self.min_windows > self.max_windows:
            return [("min_windows", "must not exceed max_windows")]
        return []


class Commissioner:
    """Collects one pipeline's feature vectors, then fits its baseline bundle."""

    def __init__(self, cfg: CommissioningConfig, source_id: str, names: Sequence[str],
                 contract: Mapping[str, object]) -> None:
        self.cfg = cfg
        self.source_id = source_id
        self.names = tuple(names)
        self.contract = dict(contract)
        self._rows: list[list[float]] = []
        self._start: float | None = None
        self._last: float | None = None
        self.skipped = 0

    @property
    def collected(self) -> int:
        return len(self._rows)

    @property
    def done(self) -> bool:
        if len(self._rows) >= self.cfg.max_windows:
            return True
        if self._start is None or self._last is None:
            return False
        return (self._last - self._start >= self.cfg.duration
                and len(self._rows) >= self.cfg.min_windows)

    def add(self, fv: FeatureVector) -> bool:
        """Add one vector (non-finite/incomplete ones are counted and skipped). True when done."""
        row = [fv.values.get(n, math.nan) for n in self.names]
        if not all(math.isfinite(v) for v in row):
            self.skipped += 1
            return self.done
        if self._start is None:
            self._start = fv.window_start
        self._last = fv.window_end
        self._rows.append(row)
        return self.done

    def matrix(self) -> npt.NDArray[np.float64]:
        return np.array(self._rows, dtype=np.float64).reshape(-1, len(self.names))

    def fit(self, *, version: str | None = None) -> Path:
        """Fit and export (CPU-heavy: run in a worker thread). Raises ``ModelError``."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.source_id)
        name = f"baseline_{safe}"
        return fit_baseline(self.matrix(), self.names, self.contract,
                            Path(self.cfg.out_dir) / name, name=name,
                            quantile=self.cfg.quantile, seed=self.cfg.seed,
                            n_estimators=self.cfg.n_estimators, version=version,
                            source={"source_id": self.source_id, "skipped": self.skipped,
                                    "window_from": self._start, "window_to": self._last})


def commissioning_event(source_id: str, timestamp: float, *, path: Path | None,
                        name: str, version: str, threshold: float | None, rows: int,
                        error: str | None = None) -> Event:
    """``baseline_learned`` (info) or ``baseline_failed`` (warning)."""
    if error is not None:
        return Event("baseline_failed", source_id, timestamp, "warning",
                     {"error": error, "rows": rows})
    return Event("baseline_learned", source_id, timestamp, "info",
                 {"model": {"name": name, "version": version}, "threshold": threshold,
                  "rows": rows, "path": str(path) if path else None})
