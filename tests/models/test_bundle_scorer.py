"""Bundle round trips, contract checks and robust scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.models.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    ContractMismatch,
    ModelError,
    load_bundle,
    pack,
    sha256_hex,
)
from edge_agent.models.onnx_score import ModelSlot, Scorer, score_vectors
from edge_agent.records import FeatureVector

from .conftest import CONTRACT, NAMES


def load(path: Path, names: Any = NAMES, contract: Any = CONTRACT) -> Scorer:
    return Scorer.load(path, expected_names=names, expected_contract=contract)


def edited(src: Path, dst: Path, *, manifest: Any = None, onnx: bytes | None = None,
           fix_sha: bool = True) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST_FILE).read_text())
    if manifest is not None:
        manifest(m)
    if onnx is not None:
        (dst / MODEL_FILE).write_bytes(onnx)
        if fix_sha:
            m["onnx_sha256"] = sha256_hex(onnx)
    (dst / MANIFEST_FILE).write_text(json.dumps(m))
    return dst


def test_manifest_describes_the_model(bundle_dir: Path, X_train: np.ndarray) -> None:
    m = load_bundle(bundle_dir).manifest
    assert m.names == NAMES and m.kind == "vibration" and m.version == "7"
    assert m.score["semantics"] == "higher_is_more_anomalous"
    assert m.score["sklearn_output"] == "-score_samples"
    assert m.score["graph"] == "fast_tree_ensemble"
    assert m.score["verified_max_abs_diff"] <= 1e-5
    assert m.extractor == CONTRACT
    assert len(m.references) >= 5
    q = m.training[NAMES[3]].quantiles
    assert q[0] == pytest.approx(X_train[:, 3].min()) and q[-1] == pytest.approx(
        X_train[:, 3].max())
    assert m.training[NAMES[3]].mean == pytest.approx(X_train[:, 3].mean())
    scores = -np.sort(-np.array([r.score for r in m.references]))
    assert m.threshold > np.median(scores[-3:])  # threshold sits in the training tail


@pytest.mark.parametrize("archive", ["", "b.tar.gz", "b.zip"])
def test_round_trip_scores_equal_sklearn(bundle_dir: Path, pipeline: Any, X_train: np.ndarray,
                                         tmp_path: Path, archive: str) -> None:
    path = pack(bundle_dir, tmp_path / archive) if archive else bundle_dir
    sc = load(path)
    assert sc.ref.name == "vib_test" and sc.ref.version == "7" and sc.names == NAMES
    X = np.vstack([X_train[:300], X_train[:100] * 2.5]).astype(np.float32).astype(np.float64)
    assert np.max(np.abs(sc.score(X) - (-pipeline.score_samples(X)))) <= 1e-5


def test_contract_mismatch_refused_with_reason(bundle_dir: Path) -> None:
    swapped = (NAMES[1], NAMES[0], *NAMES[2:])
    with pytest.raises(ContractMismatch, match=r"order differs at position 0"):
        load(bundle_dir, names=swapped)
    with pytest.raises(ContractMismatch, match=r"lacks features.*v_rms"):
        load(bundle_dir, names=(*NAMES, "v_rms"))
    with pytest.raises(ContractMismatch, match=r"does not produce: h_f21"):
        load(bundle_dir, names=NAMES[:-1])
    with pytest.raises(ContractMismatch, match=r"'window': model was trained with 2048, "
                                               r"pipeline uses 4096"):
        load(bundle_dir, contract={**CONTRACT, "window": 4096})
    with pytest.raises(ContractMismatch, match=r"'bands'"):
        load(bundle_dir, contract={**CONTRACT, "bands": [[10.0, 2000.0]]})
    # Tuples and lists, ints and equal floats are the same contract.
    load(bundle_dir, names=list(NAMES), contract={**CONTRACT, "channels": ("h",),
                                                  "sample_rate": 48000})


def test_slot_keeps_previous_model_on_refusal(bundle_dir: Path, tmp_path: Path) -> None:
    slot = ModelSlot(NAMES, {**CONTRACT, "hop": 512})
    with pytest.raises(ContractMismatch):
        slot.load(bundle_dir)
    assert slot.current is None and "hop" in (slot.last_error or "")
    slot = ModelSlot(NAMES, CONTRACT)
    first = slot.load(bundle_dir)
    bad = edited(bundle_dir, tmp_path / "bad", onnx=b"\x08\x07garbage")
    with pytest.raises(ModelError):
        slot.load(bad)
    assert slot.current is first


def test_corrupt_and_tampered_bundles(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        load(edited(bundle_dir, tmp_path / "a", onnx=b"not an onnx file at all"))
    with pytest.raises(ModelError, match="sha256"):
        load(edited(bundle_dir, tmp_path / "b", onnx=b"other bytes", fix_sha=False))
    with pytest.raises(ModelError, match=r"no model\.onnx"):
        d = edited(bundle_dir, tmp_path / "c")
        (d / MODEL_FILE).unlink()
        load(d)
    with pytest.raises(ModelError, match="not valid JSON"):
        d = edited(bundle_dir, tmp_path / "d")
        (d / MANIFEST_FILE).write_text("{truncated")
        load(d)
    with pytest.raises(ModelError, match="malformed"):
        load(edited(bundle_dir, tmp_path / "e", manifest=lambda m: m.pop("thresholds")))
    arch = pack(bundle_dir, tmp_path / "x.tar.gz")
    arch.write_bytes(arch.read_bytes()[:200])
    with pytest.raises(ModelError, match="archive"):
        load(arch)
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "nope")


def test_reference_vectors_must_reproduce(bundle_dir: Path, tmp_path: Path) -> None:
    def shift(m: dict[str, Any]) -> None:
        m["references"][2]["score"] += 0.01

    with pytest.raises(ModelError, match=r"reference vector 2 scores"):
        load(edited(bundle_dir, tmp_path / "r", manifest=shift))


def test_wrong_input_shape_refused(bundle_dir: Path, tmp_path: Path, X_train: np.ndarray) -> None:
    from sklearn.ensemble import IsolationForest

    from edge_agent.models.training.fastforest import fold_isolation_forest

    other = fold_isolation_forest(IsolationForest(n_estimators=5, random_state=0)
                                  .fit(X_train[:, :21])).SerializeToString()
    with pytest.raises(ModelError, match=r"input shape \[.*21\] does not take 22 features"):
        load(edited(bundle_dir, tmp_path / "s", onnx=other))


def test_non_finite_rows_are_marked_not_fed(bundle_dir: Path, X_train: np.ndarray) -> None:
    sc = load(bundle_dir)
    X = X_train[:6].copy()
    X[1, 3] = np.nan
    X[3, 0] = np.inf
    X[4, 5] = 1e39  # beyond float32: would become inf in the model
    s = sc.score(X)
    assert np.isnan(s[[1, 3, 4]]).all() and np.isfinite(s[[0, 2, 5]]).all()
    np.testing.assert_allclose(s[[0, 2, 5]], sc.score(X_train[[0, 2, 5]]))
    assert np.isnan(sc.score(np.full((2, 22), np.nan))).all()
    assert sc.score(np.zeros((0, 22))).shape == (0,)
    with pytest.raises(ValueError, match=r"takes \(n, 22\) features, got shape \(3, 21\)"):
        sc.score(np.zeros((3, 21)))


def test_score_vectors_batches_a_queue(bundle_dir: Path, X_train: np.ndarray) -> None:
    sc = load(bundle_dir)
    fvs = [FeatureVector("pump.de", i, i + 0.1, dict(zip(NAMES, map(float, X_train[i]),
                                                          strict=True))) for i in range(5)]
    fvs[2].values.pop(NAMES[7])
    fvs[3].values[NAMES[0]] = float("nan")
    fvs.append(FeatureVector("pump.de", 9, 9.1, dict(zip(NAMES, map(float, X_train[0] * 50),
                                                          strict=True))))
    assert score_vectors(sc, fvs) == [True, True, False, False, True, True]
    assert fvs[2].score is None and fvs[2].is_anomaly is None and fvs[2].model == sc.ref
    assert fvs[0].is_anomaly is False and fvs[5].is_anomaly is True
    assert fvs[5].score is not None and fvs[5].score > sc.threshold


def test_signed_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    from edge_agent.models.bundle import save_bundle

    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    b = load_bundle(bundle_dir)
    signed = save_bundle(tmp_path / "signed.tar.gz", b.manifest, b.onnx_bytes, private_key=priv)
    assert load_bundle(signed, public_key=pub).signature is not None
    with pytest.raises(ModelError, match=r"manifest\.sig is missing"):
        load_bundle(bundle_dir, public_key=pub)
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with pytest.raises(ModelError, match="does not verify"):
        load_bundle(signed, public_key=other)


def test_scoring_path_does_not_import_sklearn(bundle_dir: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edge_agent.models import alerting, builtin, bundle, chain, cli, commissioning\n"
        "from edge_agent.models import drift, onnx_score, spec\n"
        "from edge_agent.agent import analysis, pipeline\n"
        f"sc = onnx_score.Scorer.load({str(bundle_dir)!r}, expected_names={list(NAMES)!r}, "
        f"expected_contract={CONTRACT!r})\n"
        "sc.score([[0.0] * 22])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sklearn', 'skl2onnx', 'onnx'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
