"""Shaft speed in the chain: without one the basic features go on and one event says why; the
speed's source is not part of the contract, its range is (scoring outside it is flagged)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edge_agent.models.chain import Chain
from edge_agent.models.dsp.extract import VibrationConfig
from edge_agent.models.onnx_score import ScorerConfig
from edge_agent.models.spec import Spec, names_contract
from edge_agent.records import WaveformBlock
from edge_agent.settings import parse

BEARING = {"n_balls": 9, "ball_diameter": 0.3126, "pitch_diameter": 1.537}
SR = 12000.0


def spec(**speed: object) -> Spec:
    cfg = parse(VibrationConfig, {"include": ["basic", "envelope"], "bearing": BEARING,
                                  "envelope_band_lo": 1000.0, "envelope_band_hi": 4000.0,
                                  **speed})
    return Spec("env", cfg, 2048, 1024, SR, ("de",), source="m.de")


def block(i: int, n: int = 4096) -> WaveformBlock:
    x = np.random.default_rng(i).normal(size=(n, 1))
    return WaveformBlock("m.de", SR, ("de",), i * n / SR, x)


@pytest.fixture(scope="module")
def fixed_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained at a fixed 1797 rpm on envelope + basic features."""
    from sklearn.ensemble import IsolationForest

    from edge_agent.models.chain import features_of
    from edge_agent.models.training.export import export_bundle

    s = spec(shaft_speed_rpm=1797.0)
    names, contract = names_contract(s)
    X = features_of(s, np.random.default_rng(0).normal(size=(80 * 1024, 1)))
    model = IsolationForest(n_estimators=20, random_state=0).fit(X)
    return export_bundle(model, X, names, contract, tmp_path_factory.mktemp("b") / "env",
                         name="env", version="1", kind="vibration", source={"kind": "test"})


def test_no_speed_keeps_basic_features_and_says_why_once(fixed_bundle: Path,
                                                         tmp_path: Path) -> None:
    s = dataclasses.replace(spec(shaft_speed_tag="m.rpm"), model=ScorerConfig(path=str(
        fixed_bundle)))
    ch = Chain(s, tmp_path)
    events, vectors = [], []
    for i in range(5):                                  # no speed: never an exception
        v, e = ch.process(block(i), None)
        vectors += v
        events += e
    kinds = [e.kind for e in events]
    assert kinds.count("model_loaded") == 1               # a tag-fed pipeline takes the model
    assert kinds.count("shaft_speed_missing") == 1
    missing = next(e for e in events if e.kind == "shaft_speed_missing")
    assert missing.details["absent_features"] == [f"de_env_{d}" for d in
                                                  ("bpfo", "bpfi", "bsf", "ftf")]
    assert vectors and all("de_rms" in v.values and "de_env_bpfo" not in v.values
                           for v in vectors)
    assert all(v.score is None for v in vectors)
    st = ch.stats()
    assert st["invalid_windows"] == 0 and "shaft speed" in st["cannot_score"]
    # the speed arrives: scored, one event
    v, e = ch.process(block(9), 1790.0)
    assert [x.kind for x in e] == ["shaft_speed_restored"]
    assert all(x.score is not None and "de_env_bpfo" in x.values for x in v)
    assert ch.stats()["cannot_score"] is None
    # outside the training range (1797 rpm +- 2 %): flagged once, still scored
    v, e = ch.process(block(10), 1500.0)
    assert [x.kind for x in e] == ["shaft_speed_out_of_range"]
    assert e[0].details["trained_rpm"] == [1797.0, 1797.0]
    assert all(x.score is not None for x in v) and ch.stats()["speed_out_of_range"]
    assert ch.process(block(11), 1500.0)[1] == []
    assert [x.kind for x in ch.process(block(12), 1797.0)[1]] == ["shaft_speed_in_range"]


def test_fixed_speed_outside_the_range_is_refused(fixed_bundle: Path, tmp_path: Path) -> None:
    s = dataclasses.replace(spec(shaft_speed_rpm=1500.0), model=ScorerConfig(path=str(
        fixed_bundle)))
    ch = Chain(s, tmp_path)
    _, e = ch.process(block(0), None)
    assert [x.kind for x in e] == ["model_refused"]
    assert "shaft speed: model was trained at 1797-1797 rpm" in e[0].details["reason"]
    assert "shaft speed" in (ch.stats()["cannot_score"] or "")


def test_train_like_records_the_recordings_speed_range(fixed_bundle: Path, data_dir: Path,
                                                       tmp_path: Path) -> None:
    """``models train --from-files --like`` an envelope bundle: each recording's own speed is
    used (48 kHz CWRU files resampled to the bundle's 12 kHz) and the manifest records the
    range; a tag-fed pipeline takes the result."""
    import argparse

    from edge_agent.models.bundle import load_bundle
    from edge_agent.models.cli import add_commands
    from edge_agent.models.onnx_score import Scorer

    ap = argparse.ArgumentParser(prog="edge-agent")
    add_commands(ap.add_subparsers(dest="command", required=True))
    import scipy.io

    m = scipy.io.loadmat(data_dir / "cwru" / "48k_Drive_End_B007_0_122.mat")
    slower = tmp_path / "48k_slower.mat"              # the same signal, stated at 1750 rpm
    scipy.io.savemat(slower, {"X122_DE_time": m["X122_DE_time"][:200_000],
                              "X122RPM": np.array([[1750.0]])})
    files = [str(data_dir / "cwru" / "48k_Drive_End_IR007_0_109.mat"), str(slower)]
    out = tmp_path / "like"
    args = ap.parse_args(["models", "train", "--from-files", *files, "--like", str(fixed_bundle),
                          "--out", str(out), "--name", "like", "--quantile", "0.995"])
    assert args.func(args) == 0
    rng = load_bundle(out).manifest.extractor["shaft_speed_range"]
    assert rng == [1750.0, 1796.0]
    names, contract = names_contract(spec(shaft_speed_tag="m.rpm"))
    Scorer.load(out, expected_names=names, expected_contract=contract)
