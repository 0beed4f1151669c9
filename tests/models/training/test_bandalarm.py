"""The band alarm (models/training/bandalarm.py): its ONNX graph, one-sidedness, the deviation
floor, and the cross-fitted baseline that carries it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import TrainingError
from edge_agent.models.onnx_score import Scorer
from edge_agent.models.training.bandalarm import BandAlarm
from edge_agent.models.training.baseline import fit_baseline
from edge_agent.models.training.export import onnx_scores, to_score_onnx

NAMES = tuple(f"mic_band_{f}hz" for f in (31, 63, 125, 250, 500, 1000, 2000, 4000))
CONTRACT = {"kind": "sound", "sample_rate": 16000.0, "window": 16000, "hop": 4000,
            "channels": ["mic"], "features": [f"{n}" for n in NAMES]}


def _sessions(n_sessions: int, per: int, seed: int = 3) -> np.ndarray:
    """Band levels (dB) of recording sessions: each session shifts every band a little."""
    rng = np.random.default_rng(seed)
    base = np.linspace(-40, -60, len(NAMES))
    return np.vstack([base + rng.normal(0, 1.5, len(NAMES))
                      + rng.normal(0, 0.5, (per, len(NAMES))) for _ in range(n_sessions)])


def test_onnx_graph_scores_as_the_estimator_and_only_rises_count() -> None:
    X = _sessions(6, 40)
    est = BandAlarm(min_sd=1.0).fit(X)
    onnx_bytes, info = to_score_onnx(est, len(NAMES))
    assert info["estimator"] == "BandAlarm" and info["graph"] == "band_alarm"
    rng = np.random.default_rng(0)
    Y = np.vstack([X[:50], X[:50] + rng.normal(0, 6, (50, len(NAMES)))])
    Y32 = Y.astype(np.float32).astype(np.float64)
    assert np.abs(onnx_scores(onnx_bytes, Y32) - est.anomaly_score(Y32)).max() < 1e-4
    up, down = est.mean_.copy(), est.mean_.copy()
    up[1] += 8.0            # one band 8 dB up: e.g. a fan's rotation line (unbalance)
    down[1:] -= 8.0         # every band 8 dB down: a quieter machine, not a fault
    s_up, s_down = est.anomaly_score(np.vstack([up, down]))
    assert s_up == pytest.approx(8.0 / est.sd_[1]) and s_down <= 0.0


def test_deviation_floor() -> None:
    X = np.tile(np.linspace(-40, -50, len(NAMES)), (100, 1))   # a perfectly steady baseline
    est = BandAlarm(min_sd=2.0).fit(X)
    assert (est.sd_ == 2.0).all()
    assert est.anomaly_score(X[:1] + 1.0)[0] == pytest.approx(0.5)  # 1 dB is half a floor
    with pytest.raises(TrainingError):
        BandAlarm(min_sd=0.0)


def test_cross_fitted_baseline_keeps_every_session_and_calibrates_on_unseen_ones(
        tmp_path: Path) -> None:
    X = _sessions(8, 40)
    b = fit_baseline(X, NAMES, CONTRACT, tmp_path / "b", name="fan", estimator="band_alarm",
                     decision_seconds=5.0)
    sc = Scorer.load(b, expected_names=NAMES, expected_contract=CONTRACT)
    m = sc.manifest
    assert m.score["estimator"] == "BandAlarm" and m.source["estimator"] == "band_alarm"
    assert m.n_training_rows == len(X) and "folds" in m.source["split"]
    cal = m.score["calibration"]
    assert cal["decision_seconds"] == 5.0 and cal["calibration_windows"] == len(X)
    # unseen sessions from the same process stay under; a band 10 dB up alarms
    new = _sessions(3, 40, seed=11)
    assert np.mean(sc.score(new) > sc.threshold) < 0.02
    risen = new.copy()
    risen[:, 1] += 10.0
    assert (sc.score(risen) > sc.threshold).all()


def test_an_odd_session_is_kept_and_its_crossing_recorded(tmp_path: Path) -> None:
    """A session unlike the others stays in the model (the threshold then covers it); how far
    it crossed the threshold learned without it is recorded in the manifest."""
    X = _sessions(5, 60)
    b1 = fit_baseline(X, NAMES, CONTRACT, tmp_path / "b1", name="fan", estimator="band_alarm")
    X[240:, 2] += 15.0
    b2 = fit_baseline(X, NAMES, CONTRACT, tmp_path / "b2", name="fan", estimator="band_alarm")
    c1, c2 = (Scorer.load(b, expected_names=NAMES, expected_contract=CONTRACT)
              .manifest.score["calibration"] for b in (b1, b2))
    assert c1["new_session_exceedance"] == 0.0
    assert c2["new_session_exceedance"] == pytest.approx(0.2, abs=0.01)  # its fold, all over
    odd = Scorer.load(b2, expected_names=NAMES, expected_contract=CONTRACT)
    assert np.mean(odd.score(X[240:]) > odd.threshold) == 0.0


def test_too_small_a_baseline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="at least 200"):
        fit_baseline(_sessions(4, 40), NAMES, CONTRACT, tmp_path / "b", name="fan",
                     estimator="band_alarm")
