"""sklearn -> bundle export: verification against sklearn, refusals, MLflow and joblib inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from edge_agent.models.bundle import ModelError
from edge_agent.models.onnx_score import Scorer
from edge_agent.models.training import export as export_mod
from edge_agent.models.training.export import (
    UnsupportedModel,
    VerificationFailed,
    export_bundle,
    load_sklearn,
)

from ..conftest import CONTRACT, NAMES, training_matrix


def scorer(path: Path) -> Scorer:
    return Scorer.load(path, expected_names=NAMES, expected_contract=CONTRACT)


def test_one_class_svm_export(tmp_path: Path) -> None:
    from sklearn.svm import OneClassSVM

    X = training_matrix(400, seed=2)
    est = make_pipeline(StandardScaler(), OneClassSVM(nu=0.05, gamma="scale")).fit(X[:300])
    path = export_bundle(est, X[:300], NAMES, CONTRACT, tmp_path / "svm", name="svm",
                         X_holdout=X[300:])
    sc = scorer(path)
    assert sc.manifest.score["sklearn_output"] == "-decision_function"
    assert sc.manifest.score["graph"] == "skl2onnx"
    P = X[300:].astype(np.float32).astype(np.float64)
    assert np.max(np.abs(sc.score(P) + est.decision_function(P))) <= 1e-5


def test_forest_behind_unfoldable_scaler_uses_skl2onnx(tmp_path: Path) -> None:
    X = training_matrix(300, seed=4)
    est = make_pipeline(MinMaxScaler(), IsolationForest(n_estimators=20, random_state=0)).fit(X)
    path = export_bundle(est, X, NAMES, CONTRACT, tmp_path / "mm", name="mm")
    sc = scorer(path)
    assert sc.manifest.score["graph"] == "skl2onnx"
    assert "MinMaxScaler" in sc.manifest.score["fast_graph_unavailable"]
    P = X.astype(np.float32).astype(np.float64)
    assert np.max(np.abs(sc.score(P) + est.score_samples(P))) <= 1e-5


def test_unsupported_estimators_refused(tmp_path: Path) -> None:
    from sklearn.cluster import KMeans
    from sklearn.neighbors import LocalOutlierFactor

    X = training_matrix(100)
    for est in (make_pipeline(StandardScaler(), KMeans(n_clusters=2, n_init=1).fit(X)),
                LocalOutlierFactor(novelty=True).fit(X)):
        with pytest.raises(UnsupportedModel, match=r"cannot export (KMeans|LocalOutlierFactor)"
                                                   r": supported .*IsolationForest"):
            export_bundle(est, X, NAMES, CONTRACT, tmp_path / "u", name="u")
    with pytest.raises(UnsupportedModel, match="not fitted"):
        export_bundle(IsolationForest(), X, NAMES, CONTRACT, tmp_path / "u", name="u")
    assert not (tmp_path / "u").exists()


def test_verification_refuses_and_says_by_how_much(pipeline: Any, X_train: np.ndarray,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    other = IsolationForest(n_estimators=100, random_state=99).fit(X_train)
    real = export_mod.to_score_onnx

    def wrong(est: Any, n: int, *, fast: bool = True) -> tuple[bytes, dict[str, Any]]:
        return real(make_pipeline(StandardScaler().fit(X_train), other), n, fast=fast)

    monkeypatch.setattr(export_mod, "to_score_onnx", wrong)
    with pytest.raises(VerificationFailed, match=r"differ from sklearn by up to 0\.\d+ \(row \d+.*"
                                                 r"> tolerance 1e-05"):
        export_bundle(pipeline, X_train, NAMES, CONTRACT, tmp_path / "w", name="w")
    assert not (tmp_path / "w").exists()


def test_bad_inputs_refused(pipeline: Any, X_train: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="takes 22 features but 21 names"):
        export_bundle(pipeline, X_train[:, :21], NAMES[:21], CONTRACT, tmp_path / "a", name="a")
    with pytest.raises(ModelError, match="kind must be one of"):
        export_bundle(pipeline, X_train, NAMES, {}, tmp_path / "a", name="a")
    with pytest.raises(ModelError, match="not unique"):
        export_bundle(pipeline, X_train, (NAMES[0],) * 22, CONTRACT, tmp_path / "a", name="a")


def test_joblib_and_mlflow_inputs(pipeline: Any, X_train: np.ndarray, tmp_path: Path) -> None:
    import mlflow.sklearn

    joblib.dump(pipeline, tmp_path / "p.joblib")
    est, src = load_sklearn(tmp_path / "p.joblib")
    assert src["kind"] == "file" and len(src["sha256"]) == 64
    assert np.array_equal(est.score_samples(X_train[:5]), pipeline.score_samples(X_train[:5]))

    mlflow.sklearn.save_model(pipeline, str(tmp_path / "mlmodel"),
                              skops_trusted_types=["sklearn.tree._tree.Tree"],
                              pip_requirements=["scikit-learn"])
    text = (tmp_path / "mlmodel" / "MLmodel").read_text()
    (tmp_path / "mlmodel" / "MLmodel").write_text("run_id: 0123abcd\n" + text)
    est, src = load_sklearn(tmp_path / "mlmodel")
    assert src == {"path": str(tmp_path / "mlmodel"), "kind": "mlflow", "run_id": "0123abcd",
                   "sha256": src["sha256"]}
    path = export_bundle(est, X_train, NAMES, CONTRACT, tmp_path / "fromml", name="m",
                         source=src)
    sc = scorer(path)
    assert sc.manifest.source["run_id"] == "0123abcd"
    P = X_train[:50].astype(np.float32).astype(np.float64)
    assert np.max(np.abs(sc.score(P) + pipeline.score_samples(P))) <= 1e-5

    mlflow.sklearn.save_model(pipeline, str(tmp_path / "mlpickle"),
                              serialization_format="cloudpickle",
                              pip_requirements=["scikit-learn"])
    est, src = load_sklearn(tmp_path / "mlpickle")
    assert src["kind"] == "mlflow"
    assert np.array_equal(est.score_samples(X_train[:5]), pipeline.score_samples(X_train[:5]))
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelError, match="cannot unpickle"):
        load_sklearn(tmp_path / "junk.pkl")
    with pytest.raises(ModelError, match="not an MLflow model"):
        load_sklearn(tmp_path)
