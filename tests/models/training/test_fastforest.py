"""The single-operator IsolationForest graph gives sklearn's (and stock skl2onnx's) scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edge_agent.models.onnx_score import session_options
from edge_agent.models.training.export import stock_onnx
from edge_agent.models.training.fastforest import (
    FoldError,
    fold_isolation_forest,
    fold_thresholds,
    split_pipeline,
)

from ..conftest import training_matrix


def run(model_bytes: bytes, X: np.ndarray, output: str = "score") -> np.ndarray:
    s = ort.InferenceSession(model_bytes, sess_options=session_options(1),
                             providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.asarray(s.run([output], {name: X.astype(np.float32)})[0], np.float64).ravel()


def probe_rows(X: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu, sd = X.mean(0), X.std(0)
    return np.vstack([X[:400], mu + rng.normal(size=(300, X.shape[1])) * sd * 3,
                      X[:200] * 1.7]).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize(("scaler", "max_features", "max_samples"), [
    (True, 1.0, "auto"), (False, 1.0, "auto"), (True, 0.5, "auto"), (True, 1.0, 1000)])
def test_fast_graph_equals_sklearn(scaler: bool, max_features: float,
                                   max_samples: Any) -> None:
    X = training_matrix(1200, seed=3)
    forest = IsolationForest(n_estimators=60, max_features=max_features,
                             max_samples=max_samples, random_state=5)
    est = make_pipeline(StandardScaler(), forest) if scaler else forest
    est.fit(X)
    affine, f = split_pipeline(est)
    assert (affine is not None) == scaler
    model = fold_isolation_forest(f, affine)
    assert [n.op_type for n in model.graph.node] == ["TreeEnsembleRegressor", "Exp"]
    P = probe_rows(X)
    got = run(model.SerializeToString(), P)
    want = -est.score_samples(P)
    assert np.max(np.abs(got - want)) <= 1e-5
    # The anomalous probes really score higher: the comparison is not trivially flat.
    assert got[400:700].mean() > got[:400].mean() + 0.05


def test_fast_graph_equals_stock_skl2onnx(X_train: np.ndarray) -> None:
    # 40 trees keep skl2onnx's per-tree conversion quick; the bench uses 100.
    pipeline = make_pipeline(StandardScaler(), IsolationForest(n_estimators=40, random_state=2)
                             ).fit(X_train)
    affine, f = split_pipeline(pipeline)
    fast = fold_isolation_forest(f, affine).SerializeToString()
    stock = stock_onnx(pipeline, X_train.shape[1]).SerializeToString()
    P = probe_rows(X_train)
    stock_score = -(run(stock, P, "scores") + pipeline[-1].offset_)
    diff = np.abs(run(fast, P) - stock_score)
    assert diff.max() <= 1e-5, diff.max()


def test_fold_thresholds_is_the_exact_float32_cut() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    mean = rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e4], n)
    scale = rng.uniform(1e-4, 1e3, n)
    t = rng.normal(size=n) * 3
    cut = fold_thresholds(t, mean, scale)

    def cond(x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float64) - mean) / scale).astype(np.float32).astype(np.float64) <= t

    assert cond(cut).all()
    assert not cond(np.nextafter(cut, np.float32(np.inf))).any()


def test_non_forest_is_refused() -> None:
    from sklearn.svm import OneClassSVM

    X = training_matrix(100)
    with pytest.raises(FoldError, match="OneClassSVM"):
        split_pipeline(make_pipeline(StandardScaler(), OneClassSVM()).fit(X))
