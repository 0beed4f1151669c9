"""Commissioning: learn this asset's own baseline before scoring.

:class:`Commissioner` collects the feature vectors of one pipeline for a configured period or
count; the chain (:mod:`edge_agent.models.chain`) runs :meth:`Commissioner.fit` in a worker
thread, loads the bundle and records the event built by :func:`commissioning_event`.

Collecting needs numpy only; fitting needs the ``[train]`` extra (scikit-learn, skl2onnx, onnx):
:func:`require_train_extra` refuses a commissioning pipeline at start when it is missing, with
the message of :class:`~edge_agent.errors.TrainExtraMissing`.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.errors import TrainExtraMissing
from edge_agent.models.calibration import DEFAULT_FALSE_ALARMS_PER_HOUR, DEFAULT_MIN_SD, MIN_ROWS
from edge_agent.records import Event, FeatureVector
from edge_agent.settings import Duration, Model

__all__ = ["MIN_ROWS", "Commissioner", "CommissioningConfig", "commissioning_event",
           "missing_train_extra", "require_train_extra"]

# import name -> distribution name, for everything the ``[train]`` extra installs
TRAIN_EXTRA: tuple[tuple[str, str], ...] = (
    ("sklearn", "scikit-learn"), ("skl2onnx", "skl2onnx"), ("onnx", "onnx"),
    ("joblib", "joblib"),
)


def missing_train_extra() -> str | None:
    """The first distribution of the ``[train]`` extra that is not installed, or None
    (looked up without importing anything)."""
    for module, dist in TRAIN_EXTRA:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return dist
    return None


def require_train_extra() -> None:
    """Raise :class:`TrainExtraMissing` unless the ``[train]`` extra is installed."""
    missing = missing_train_extra()
    if missing is not None:
        raise TrainExtraMissing(missing)


class CommissioningConfig(Model):
    """``[pipelines.<id>.commissioning]``: learn this asset's baseline before scoring."""

    enabled: bool = False
    duration: Duration = Field(3600.0, gt=0)
    """Collect feature vectors for this long (stream time: window ends)."""
    max_windows: int = Field(20000, ge=MIN_ROWS)
    """... or until this many vectors have been collected, whichever comes first."""
    min_windows: int = Field(200, ge=MIN_ROWS)
    false_alarms_per_hour: float = Field(DEFAULT_FALSE_ALARMS_PER_HOUR, gt=0)
    """Target rate the threshold is calibrated for (on held-out normal data)."""
    decision_seconds: Duration = 0.0
    """Decide on the mean score over this span (0: single windows); e.g. "5s" for sound."""
    quantile: float | None = Field(None, ge=0.5, lt=1.0)
    """Old rule, for comparison only: this quantile of the fit rows' scores."""
    n_estimators: int = Field(100, ge=10, le=1000)
    estimator: Literal["isolation_forest", "band_alarm"] = "isolation_forest"
    """band_alarm: each feature's rise over its baseline (for sound band levels)."""
    min_sd: float = Field(DEFAULT_MIN_SD, gt=0)
    """band_alarm: floor of a feature's baseline deviation (dB for band levels)."""
    seed: int = 0
    out_dir: str = "/var/lib/edge-agent/models"

    def problems(self) -> list[tuple[str, str]]:
        if self.min_windows > self.max_windows:
            return [("min_windows", "must not exceed max_windows")]
        return []


class Commissioner:
    """Collects one pipeline's feature vectors, then fits its baseline bundle."""

    def __init__(self, cfg: CommissioningConfig, source_id: str, names: Sequence[str],
                 contract: Mapping[str, object], *, out_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.out_dir = out_dir if out_dir is not None else Path(cfg.out_dir)
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
        """Fit and export (CPU-heavy: run in a worker thread). Raises ``TrainingError``
        (``TrainExtraMissing`` without the ``[train]`` extra)."""
        require_train_extra()
        from edge_agent.models.training.baseline import fit_baseline

        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.source_id)
        name = f"baseline_{safe}"
        return fit_baseline(self.matrix(), self.names, self.contract,
                            self.out_dir / name, name=name,
                            quantile=self.cfg.quantile, seed=self.cfg.seed,
                            false_alarms_per_hour=self.cfg.false_alarms_per_hour,
                            decision_seconds=self.cfg.decision_seconds,
                            n_estimators=self.cfg.n_estimators, version=version,
                            estimator=self.cfg.estimator, min_sd=self.cfg.min_sd,
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
