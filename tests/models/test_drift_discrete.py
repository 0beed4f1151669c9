"""Drift on features with few distinct values (tied training quantiles)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest

from edge_agent.models.bundle import Manifest, feature_specs
from edge_agent.models.drift import DriftConfig, DriftMonitor, decile_bins, ks_distance
from edge_agent.models.training.export import QUANTILE_LEVELS, training_summary

NAMES = ("iso_zone", "dominant_frequency", "rms")


def sample(n: int, rng: np.random.Generator, p_zone1: float = 0.1) -> np.ndarray:
    zone = (rng.random(n) < p_zone1).astype(np.float64)
    dom = rng.choice([29.296875, 29.8828125, 30.46875], size=n)
    return np.column_stack([zone, dom, rng.normal(1.0, 0.1, size=n)])


def manifest(X: np.ndarray) -> Manifest:
    return Manifest(name="m", version="1", kind="vibration", features=feature_specs(NAMES),
                    extractor={}, score={"semantics": "higher_is_more_anomalous"},
                    thresholds={"anomaly": 1.0}, training=training_summary(X, NAMES),
                    quantile_levels=tuple(QUANTILE_LEVELS), references=(),
                    onnx_sha256="0" * 64, created="now", n_training_rows=len(X))


@pytest.mark.parametrize("method", ["psi", "ks"])
def test_same_distribution_discrete_features_do_not_drift(method: Literal["psi", "ks"]
                                                         ) -> None:
    rng = np.random.default_rng(3)
    m = manifest(sample(5000, rng))
    cfg = DriftConfig(method=method, window=300, every=10,
                      threshold=0.25 if method == "psi" else 0.2)
    for seed in range(5):
        mon = DriftMonitor("s", m, cfg)
        evs = [mon.update(r, float(i)) for i, r in enumerate(sample(600, np.random.default_rng(
            100 + seed)))]
        assert all(e is None for e in evs)
        st = mon.status
        assert st is not None
        for name in NAMES:
            p, k = st.per_feature[name]
            assert p < 0.1 and k < 0.1, (name, p, k)


@pytest.mark.parametrize("method", ["psi", "ks"])
def test_zone_moving_to_1_is_drift(method: Literal["psi", "ks"]) -> None:
    rng = np.random.default_rng(3)
    m = manifest(sample(5000, rng))
    cfg = DriftConfig(method=method, window=300, every=10,
                      threshold=0.25 if method == "psi" else 0.2)
    mon = DriftMonitor("s", m, cfg)
    evs = [mon.update(r, float(i)) for i, r in enumerate(sample(600, rng, p_zone1=0.8))]
    got = [e for e in evs if e is not None]
    assert [e.kind for e in got] == ["drift_detected"]
    assert got[0].details["feature"] == "iso_zone"


def test_all_deciles_tied_still_separates_values_above() -> None:
    levels = np.asarray(QUANTILE_LEVELS)
    q = np.where(levels <= 0.9, 0.0, 1.0)  # 0 at levels 0..0.9, 1 above
    _edges, expected = decile_bins(q, levels)
    assert expected.sum() == pytest.approx(1.0)
    assert expected.tolist() == pytest.approx([0.0, 0.9, 0.1])
    assert ks_distance(np.r_[np.zeros(90), np.ones(10)], q, levels) < 0.06  # one level step
    assert ks_distance(np.ones(100), q, levels) == pytest.approx(0.95)


def test_continuous_bins_unchanged() -> None:
    levels = np.asarray(QUANTILE_LEVELS)
    q = np.quantile(np.random.default_rng(0).normal(size=10000), levels)
    edges, expected = decile_bins(q, levels)
    assert np.array_equal(edges, q[2:-1:2]) and expected == pytest.approx(np.full(10, 0.1))
