"""Threshold calibration on held-out normal data (models/calibration.py) and its use by
fit_baseline and the chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from edge_agent.errors import TrainingError
from edge_agent.models.calibration import MIN_ROWS, RollingMean, calibrate, decisions, split
from edge_agent.models.onnx_score import Scorer
from edge_agent.models.training.baseline import fit_baseline

from ..conftest import CONTRACT, NAMES, training_matrix


def test_threshold_for_a_rate_per_hour() -> None:
    s = np.random.default_rng(0).normal(0.5, 0.01, size=2000)
    c = calibrate(s, window_period=0.1, false_alarms_per_hour=0.1, persistence=2.0)
    p = 0.1 * 2.0 / 3600
    assert c.info["exceedance_per_decision"] == pytest.approx(p)
    assert c.threshold == pytest.approx(max(0.5 + norm.isf(p) * 0.01, s.max()), abs=1e-3)
    assert c.info["calibration_windows"] == 2000 and c.info["decision_seconds"] == 0.0
    # decisions over 1 s: means of 10 windows, a tighter spread, a lower threshold
    d = calibrate(s, window_period=0.1, false_alarms_per_hour=0.1, decision_seconds=1.0)
    assert d.info["windows_per_decision"] == 10 and d.threshold < c.threshold
    assert np.allclose(decisions(np.arange(5.0), 2), [0.5, 1.5, 2.5, 3.5])
    # a higher rate allowed: a lower threshold
    assert calibrate(s, window_period=0.1, false_alarms_per_hour=10).threshold < c.threshold
    with pytest.raises(TrainingError, match="too few"):
        calibrate(s[:25], window_period=0.1, false_alarms_per_hour=0.1, decision_seconds=1.0)


def test_fit_baseline_calibrates_on_held_out_rows_and_records_it(tmp_path: Path) -> None:
    X = training_matrix(600, seed=4)
    path = fit_baseline(X, NAMES, CONTRACT, tmp_path / "b", name="site", n_estimators=50)
    m = Scorer.load(path, expected_names=NAMES, expected_contract=CONTRACT).manifest
    a, _ = split(600)
    cal = m.score["calibration"]
    assert m.source["fit_rows"] == m.n_training_rows == a == 360
    assert cal["calibration_windows"] == 600 - a  # calibration + check parts, never fitted
    assert cal["false_alarms_per_hour"] == 0.1 and cal["check_exceedance"] <= 0.02
    assert cal["window_period_s"] == pytest.approx(1024 / 48000)
    assert m.score["threshold_rule"] == "calibrated on held-out normal data"
    fresh = Scorer.load(path, expected_names=NAMES, expected_contract=CONTRACT)
    new = fresh.score(training_matrix(2000, seed=8))
    assert np.mean(new > fresh.threshold) < 0.005


def test_unstable_or_small_baseline_is_refused(tmp_path: Path) -> None:
    X = training_matrix(600, seed=4)
    X[480:] += 3 * X[:480].std(axis=0)  # the check part left the calibrated range: not stable
    with pytest.raises(TrainingError, match="not stable"):
        fit_baseline(X, NAMES, CONTRACT, tmp_path / "b", name="site", n_estimators=50)
    with pytest.raises(TrainingError, match=f"at least {MIN_ROWS}"):
        fit_baseline(X[:MIN_ROWS - 1], NAMES, CONTRACT, tmp_path / "b", name="site")


def test_rolling_mean_over_seconds() -> None:
    r = RollingMean(1.0)
    assert [r.add(t, v) for t, v in [(0.0, 1.0), (0.5, 3.0), (1.0, 5.0), (2.2, 7.0)]] == \
        [1.0, 2.0, 4.0, 7.0]
