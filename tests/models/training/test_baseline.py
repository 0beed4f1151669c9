"""Baseline fitting from a feature matrix, and the commissioning collector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.models.bundle import ModelError, load_bundle
from edge_agent.models.commissioning import Commissioner, CommissioningConfig, commissioning_event
from edge_agent.models.drift import DriftConfig, DriftMonitor
from edge_agent.models.onnx_score import Scorer
from edge_agent.models.training.baseline import fit_baseline
from edge_agent.records import FeatureVector

from ..conftest import CONTRACT, NAMES, training_matrix


def test_fit_baseline_with_constant_feature_and_bad_rows(tmp_path: Path) -> None:
    X = training_matrix(600, seed=5)
    X[:, 4] = 2.0  # e.g. an ISO zone that never changes on a healthy machine
    X[10, 3] = np.nan
    X[11, 0] = np.inf
    path = fit_baseline(X, NAMES, CONTRACT, tmp_path / "b", name="site", quantile=0.99,
                        n_estimators=50)
    sc = Scorer.load(path, expected_names=NAMES, expected_contract=CONTRACT)
    m = sc.manifest
    assert m.source["dropped_non_finite"] == 2 and m.source["rows"] == 598
    assert m.source["fit_rows"] == m.n_training_rows == 598 - int(598 * 0.2)  # old rule
    s = sc.score(X[:480])
    finite = s[np.isfinite(s)]
    assert len(finite) == 478
    # threshold = 99 % quantile of the training scores (as float32 scores)
    assert np.mean(finite > sc.threshold) == pytest.approx(0.01, abs=0.006)
    mu, sd = X[20:480].mean(0), X[20:480].std(0)
    far = mu + sd * np.where(np.arange(22) % 2, 6.0, -6.0)
    assert (sc.score(np.vstack([far, far * 1.5])) > sc.threshold).all()
    # IsolationForest never splits on the constant feature; drift watches it instead.
    mon = DriftMonitor("x", m, DriftConfig(window=50, every=50))
    moved = X[20:71].copy()  # one vector a second: 50 s span the window
    moved[:, 4] = 3.0
    evs = [mon.update(r, float(i)) for i, r in enumerate(moved)]
    assert evs[-1] is not None and evs[-1].details["feature"] == NAMES[4]
    assert all(e is None for e in evs[:-1])
    # Same seed, same data: the same model.
    again = fit_baseline(X, NAMES, CONTRACT, tmp_path / "b2", name="site", quantile=0.99,
                         n_estimators=50, version=m.version)
    assert load_bundle(again).manifest.onnx_sha256 == m.onnx_sha256


def test_fit_baseline_refusals(tmp_path: Path) -> None:
    X = training_matrix(300)
    with pytest.raises(ModelError, match="at least 200 finite"):
        fit_baseline(X[:20], NAMES, CONTRACT, tmp_path / "a", name="a")
    with pytest.raises(ModelError, match=r"must be \(n, 22\)"):
        fit_baseline(X[:, :5], NAMES, CONTRACT, tmp_path / "a", name="a")
    with pytest.raises(ModelError, match="quantile"):
        fit_baseline(X, NAMES, CONTRACT, tmp_path / "a", name="a", quantile=1.0)
    assert not (tmp_path / "a").exists()


def test_fit_baseline_replaces_bundle_atomically(tmp_path: Path) -> None:
    X = training_matrix(200)
    p = fit_baseline(X, NAMES, CONTRACT, tmp_path / "b", name="a", version="1",
                     n_estimators=20)
    fit_baseline(X * 1.1, NAMES, CONTRACT, p, name="a", version="2", n_estimators=20)
    assert load_bundle(p).manifest.version == "2"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b"]


def test_commissioner_collects_then_fits(tmp_path: Path) -> None:
    cfg = CommissioningConfig(enabled=True, duration=30.0, min_windows=200, max_windows=1000,
                              n_estimators=20, out_dir=str(tmp_path))
    com = Commissioner(cfg, "pump-01.de_accel", NAMES, CONTRACT)
    X = training_matrix(400, seed=9)
    done_at = None
    for i, row in enumerate(X):
        values = dict(zip(NAMES, map(float, row), strict=True))
        if i == 3:
            values[NAMES[2]] = float("nan")
        if com.add(FeatureVector("pump-01.de_accel", i * 0.1, i * 0.1 + 0.2, values)):
            done_at = i
            break
    # window ends reach 30 s after the first start at i = 298; row 3 was skipped
    assert done_at == 298 and com.collected == 298 and com.skipped == 1
    path = com.fit(version="c1")
    sc = Scorer.load(path, expected_names=NAMES, expected_contract=CONTRACT)
    assert sc.ref.name == "baseline_pump-01.de_accel" and sc.ref.version == "c1"
    ev = commissioning_event("pump-01.de_accel", 12.0, path=path, name=sc.ref.name,
                             version=sc.ref.version, threshold=sc.threshold, rows=com.collected)
    assert ev.kind == "baseline_learned" and ev.details["threshold"] == sc.threshold
    bad = commissioning_event("s", 1.0, path=None, name="n", version="v", threshold=None,
                              rows=3, error="too few")
    assert bad.kind == "baseline_failed" and bad.severity == "warning"
