"""sklearn outlier pipeline -> verified model bundle (``edge-agent models export``).

Supported: ``IsolationForest`` and ``OneClassSVM``, alone or at the end of a ``Pipeline`` whose
other steps skl2onnx converts (typically ``StandardScaler``), and the band alarm of
:mod:`.bandalarm` (its own three-node graph). An IsolationForest behind at most
one ``StandardScaler`` becomes the single-operator graph of :mod:`.fastforest`; everything else
goes through skl2onnx with a final node turning its output into the bundle's score.

Before anything is written, ONNX scores are compared with sklearn's on held-out rows (rounded
to float32, as the edge feeds them); a difference above ``tol`` (1e-5) refuses the export and
says by how much. sklearn, skl2onnx and onnx are imported here only (training extra).
"""

from __future__ import annotations

import pickle
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import TrainingError
from edge_agent.models.bundle import (
    KINDS,
    FeatureSummary,
    Manifest,
    ModelError,
    Reference,
    feature_specs,
    normalise,
    save_bundle,
    sha256_hex,
)
from edge_agent.timestamps import compact, now, second_text

SUPPORTED = ("IsolationForest", "OneClassSVM", "BandAlarm")
QUANTILE_LEVELS: tuple[float, ...] = tuple(round(i / 20, 2) for i in range(21))
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


class UnsupportedModel(TrainingError):
    """The estimator cannot be exported to a bundle."""


class VerificationFailed(TrainingError):
    """ONNX and sklearn scores disagree beyond the tolerance."""


# -- loading sklearn models -------------------------------------------------------------------

def load_sklearn(path: Path | str) -> tuple[Any, dict[str, Any]]:
    """Load a pipeline from a joblib/pickle file or an MLflow sklearn model directory.

    Returns ``(estimator, source)``; ``source`` records where it came from (MLflow run id when
    the ``MLmodel`` file names one). Pickles execute code: load only files you trust.
    """
    p = Path(path)
    source: dict[str, Any] = {"path": str(p)}
    if p.is_dir():
        mlmodel = p / "MLmodel"
        if not mlmodel.is_file():
            raise ModelError(f"{p} is a directory but not an MLflow model (no MLmodel file)")
        text = mlmodel.read_text(encoding="utf-8")
        m = re.search(r"^\s+pickled_model:\s*(\S+)\s*$", text, re.M)
        if "sklearn:" not in text or m is None:
            raise UnsupportedModel(f"{p}: MLflow model has no sklearn flavour with a pickled model")
        run = re.search(r"^run_id:\s*(\S+)\s*$", text, re.M)
        source.update(kind="mlflow", run_id=run.group(1) if run else None)
        p = p / m.group(1)
        fmt = re.search(r"^\s+serialization_format:\s*(\S+)\s*$", text, re.M)
        if fmt and fmt.group(1) == "skops":
            trusted = re.search(r"^(\s+)skops_trusted_types:\s*\n((?:\1\s*- .*\n?)*)", text, re.M)
            types = re.findall(r"- (\S+)", trusted.group(2)) if trusted else []
            est = _load_skops(p, types)
            source["sha256"] = sha256_hex(p.read_bytes())
            return est, source
    else:
        source["kind"] = "file"
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    if p.suffix == ".skops":
        est = _load_skops(p, [])
        source["sha256"] = sha256_hex(p.read_bytes())
        return est, source
    try:
        try:
            import joblib  # reads plain pickles and joblib's numpy-aware format
        except ImportError:
            with p.open("rb") as fh:
                est = pickle.load(fh)  # trusted model files only (documented)
        else:
            est = joblib.load(p)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError,
            IndexError, KeyError, struct.error) as exc:
        raise ModelError(f"cannot unpickle {p}: {type(exc).__name__}: {exc}") from exc
    source["sha256"] = sha256_hex(p.read_bytes())
    return est, source


def _load_skops(p: Path, trusted: list[str]) -> Any:
    """Load a skops file, trusting only the types its MLmodel lists (and skops' defaults)."""
    try:
        import skops.io as sio
    except ImportError as exc:
        raise ModelError(f"{p} is a skops file; install skops to export it") from exc
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    untrusted = [t for t in sio.get_untrusted_types(file=p) if t not in trusted]
    if untrusted:
        raise ModelError(f"{p}: skops file contains types not declared trusted in MLmodel: "
                         f"{', '.join(untrusted)}")
    try:
        return sio.load(p, trusted=trusted or None)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ModelError(f"cannot load skops file {p}: {exc}") from exc


# -- scores -----------------------------------------------------------------------------------

def final_step(est: Any) -> Any:
    return est.steps[-1][1] if hasattr(est, "steps") else est


def check_supported(est: Any) -> str:
    last = final_step(est)
    kind = type(last).__name__
    if kind not in SUPPORTED:
        raise UnsupportedModel(
            f"cannot export {kind}: supported final estimators are {', '.join(SUPPORTED)} "
            f"(optionally after skl2onnx-convertible preprocessing such as StandardScaler)")
    if not hasattr(last, "n_features_in_"):
        raise UnsupportedModel(f"{kind} is not fitted")
    return kind


def sklearn_scores(est: Any, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The bundle's score from sklearn: higher = more anomalous."""
    kind = check_supported(est)
    if kind in ("IsolationForest", "BandAlarm"):
        return -np.asarray(est.score_samples(X), dtype=np.float64)
    return -np.asarray(est.decision_function(X), dtype=np.float64).reshape(-1)


def stock_onnx(est: Any, n_features: int) -> Any:
    """skl2onnx's own conversion (outputs ``label`` and ``scores`` = decision_function)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.exceptions import MissingShapeCalculator

    try:
        return to_onnx(est, np.zeros((1, n_features), dtype=np.float32),
                       target_opset=TARGET_OPSET)
    except (MissingShapeCalculator, RuntimeError, NotImplementedError, TypeError,
            ValueError) as exc:
        raise UnsupportedModel(f"skl2onnx cannot convert {type(est).__name__}: {exc}") from exc


def _wrap_stock(model: Any, kind: str, offset: float) -> Any:
    """Append ``score = -(scores + offset)`` (IsolationForest) or ``-scores`` (OneClassSVM)."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    if len(g.input) != 1 or "scores" not in {o.name for o in g.output}:
        raise UnsupportedModel("skl2onnx graph lacks a single input and a 'scores' output")
    g.input[0].name, old_in = "X", g.input[0].name
    for node in g.node:
        for i, n in enumerate(node.input):
            if n == old_in:
                node.input[i] = "X"
    off = helper.make_tensor("score_offset", TensorProto.FLOAT, [], [offset])
    g.initializer.append(off)
    g.node.extend([
        helper.make_node("Add", ["scores", "score_offset"], ["score_shifted"]),
        helper.make_node("Neg", ["score_shifted"], ["score"]),
    ])
    while len(g.output):
        g.output.pop()
    g.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(model)
    return model


def to_score_onnx(est: Any, n_features: int, *, fast: bool = True) -> tuple[bytes, dict[str, Any]]:
    """ONNX bytes computing the bundle score, and the manifest's ``score`` description."""
    from edge_agent.models.training.fastforest import (
        FoldError,
        fold_isolation_forest,
        split_pipeline,
    )

    kind = check_supported(est)
    if kind == "BandAlarm":
        from edge_agent.models.training.bandalarm import to_onnx

        band = final_step(est)
        return to_onnx(band).SerializeToString(), {
            "semantics": "higher_is_more_anomalous", "estimator": kind, "graph": "band_alarm",
            "rule": "max over features of (x - baseline mean) / baseline sd",
            "min_sd": band.min_sd}
    out = "-score_samples" if kind == "IsolationForest" else "-decision_function"
    info: dict[str, Any] = {"semantics": "higher_is_more_anomalous", "estimator": kind,
                            "sklearn_output": out}
    if fast and kind == "IsolationForest":
        try:
            affine, forest = split_pipeline(est)
            model = fold_isolation_forest(forest, affine)
            info["graph"] = "fast_tree_ensemble"
            return model.SerializeToString(), info
        except FoldError as exc:
            info["fast_graph_unavailable"] = str(exc)
    model = stock_onnx(est, n_features)
    last = final_step(est)
    # IsolationForest's decision_function = score_samples - offset_.
    offset = float(last.offset_) if kind == "IsolationForest" else 0.0
    info["graph"] = "skl2onnx"
    return _wrap_stock(model, kind, offset).SerializeToString(), info


def onnx_scores(onnx_bytes: bytes, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    import onnxruntime as ort

    from edge_agent.models.onnx_score import session_options

    sess = ort.InferenceSession(onnx_bytes, sess_options=session_options(1),
                                providers=["CPUExecutionProvider"])
    res = sess.run(["score"], {"X": X.astype(np.float32)})[0]
    return np.asarray(res, dtype=np.float64).reshape(-1)


def verify(est: Any, onnx_bytes: bytes, X: npt.NDArray[np.float64], tol: float = 1e-5
           ) -> tuple[float, npt.NDArray[np.float64]]:
    """Compare ONNX with sklearn on float32-rounded rows; raise if max |diff| > tol."""
    X32 = X.astype(np.float32).astype(np.float64)
    want = sklearn_scores(est, X32)
    got = onnx_scores(onnx_bytes, X32)
    diff = np.abs(got - want)
    worst = float(np.max(diff)) if diff.size else 0.0
    if not np.all(np.isfinite(got)) or worst > tol:
        i = int(np.nanargmax(diff)) if diff.size else 0
        raise VerificationFailed(
            f"ONNX scores differ from sklearn by up to {worst:.3g} (row {i}: onnx {got[i]:.8g}, "
            f"sklearn {want[i]:.8g}) > tolerance {tol:g} over {len(X)} held-out rows; "
            f"refusing to write the bundle")
    return worst, got


# -- bundle -----------------------------------------------------------------------------------

def training_summary(X: npt.NDArray[np.float64], names: Sequence[str]
                     ) -> dict[str, FeatureSummary]:
    q = np.quantile(X, QUANTILE_LEVELS, axis=0)
    return {n: FeatureSummary(float(np.mean(X[:, j])), float(np.std(X[:, j])),
                              tuple(float(v) for v in q[:, j])) for j, n in enumerate(names)}


def _reference_rows(X: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]
                    ) -> npt.NDArray[np.float64]:
    order = np.argsort(scores)
    picks = order[np.unique(np.round(np.array([0, .25, .5, .75, .9, .99, 1.0])
                                     * (len(order) - 1)).astype(int))]
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-12
    far = np.vstack([mu + 6 * sd, mu - 3 * sd * np.where(np.arange(X.shape[1]) % 2, 1, -1)])
    return np.vstack([X[picks], far]).astype(np.float32).astype(np.float64)


def _stress_rows(X: npt.NDArray[np.float64], seed: int) -> npt.NDArray[np.float64]:
    """Rows outside the training cloud, so verification also covers anomalous paths."""
    rng = np.random.default_rng(seed)
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-12
    n = min(len(X), 256)
    return np.vstack([mu + rng.normal(size=(n, X.shape[1])) * sd * 4,
                      X[rng.integers(0, len(X), n)] * rng.uniform(0.5, 2.0, size=(n, 1))])


def export_bundle(est: Any, X_train: npt.ArrayLike, names: Sequence[str],
                  contract: Mapping[str, object], out: Path | str, *, name: str,
                  version: str | None = None, kind: str | None = None,
                  units: Mapping[str, str] | None = None, threshold: float | None = None,
                  quantile: float = 0.995, X_holdout: npt.ArrayLike | None = None,
                  source: Mapping[str, Any] | None = None, tol: float = 1e-5, seed: int = 0,
                  fast: bool = True, private_key: bytes | None = None,
                  calibration: Mapping[str, Any] | None = None) -> Path:
    """Convert, verify and write a bundle; returns the bundle path (dir or archive).

    ``X_train``: a sample of the training features (summary for drift checks; the threshold is
    the ``quantile`` of its scores unless ``threshold`` is given). ``X_holdout``: rows for the
    sklearn/ONNX comparison (default: ``X_train``), always plus synthetic out-of-range rows.
    """
    names = tuple(names)
    Xt = _finite_rows(np.asarray(X_train, dtype=np.float64), len(names), "training sample")
    if len(Xt) < 2:
        raise ModelError("need at least 2 finite training rows to export")
    if int(getattr(final_step(est), "n_features_in_", len(names))) != len(names):
        raise ModelError(f"model takes {final_step(est).n_features_in_} features but "
                         f"{len(names)} names were given")
    if len(set(names)) != len(names):
        raise ModelError("feature names are not unique")
    contract = normalise(dict(contract))
    kind = kind or str(contract.get("kind", ""))
    if kind not in KINDS:
        raise ModelError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    onnx_bytes, score_info = to_score_onnx(est, len(names), fast=fast)
    score_info.update(_verified(est, onnx_bytes, Xt, X_holdout, seed, tol))
    train_scores = onnx_scores(onnx_bytes, Xt)
    if threshold is None:
        threshold = float(np.quantile(train_scores, quantile))
        score_info["threshold_rule"] = f"quantile {quantile} of {len(Xt)} training scores"
    elif calibration is not None:
        score_info["threshold_rule"] = "calibrated on held-out normal data"
        score_info["calibration"] = dict(calibration)
    else:
        score_info["threshold_rule"] = "given"
    ref_X = _reference_rows(Xt, train_scores)
    ref_s = onnx_scores(onnx_bytes, ref_X)
    manifest = Manifest(
        name=name, version=version or compact(),
        kind=kind, features=feature_specs(names, units), extractor=contract,
        score=score_info, thresholds={"anomaly": float(threshold)},
        training=training_summary(Xt, names), quantile_levels=QUANTILE_LEVELS,
        references=tuple(Reference(tuple(float(v) for v in x), float(s))
                         for x, s in zip(ref_X, ref_s, strict=True)),
        onnx_sha256=sha256_hex(onnx_bytes),
        created=f"{second_text(int(now()))}Z",
        source=normalise(dict(source or {})), n_training_rows=len(Xt),
    )
    path = save_bundle(out, manifest, onnx_bytes, private_key=private_key)
    from edge_agent.models.bundle import load_bundle
    from edge_agent.models.onnx_score import Scorer

    Scorer.from_bundle(load_bundle(path))  # re-read from disk: sha256 + reference vectors
    return path


def _verified(est: Any, onnx_bytes: bytes, Xt: npt.NDArray[np.float64],
              X_holdout: npt.ArrayLike | None, seed: int, tol: float) -> dict[str, Any]:
    """The export's verification: ONNX against sklearn on the held-out rows (default: the
    training sample ``Xt``) plus synthetic out-of-range rows; raises
    :class:`VerificationFailed` beyond ``tol``, else returns the manifest's record of it."""
    Xh = Xt if X_holdout is None else _finite_rows(np.asarray(X_holdout, np.float64),
                                                   Xt.shape[1], "held-out rows")
    Xv = np.vstack([Xh, _stress_rows(Xt, seed)])
    worst, _ = verify(est, onnx_bytes, Xv, tol)
    return {"verified_max_abs_diff": worst, "verified_rows": len(Xv)}


def _finite_rows(X: npt.NDArray[np.float64], n_features: int, what: str
                 ) -> npt.NDArray[np.float64]:
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ModelError(f"{what} must be (n, {n_features}), got shape {X.shape}")
    return X[np.isfinite(X).all(axis=1)]
