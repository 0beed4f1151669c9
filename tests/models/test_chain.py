"""The analysis chain (models/chain.py): offline feature matrices come from the same chain the
daemon runs, and a running chain swaps its scorer between two blocks."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from edge_agent.models.builtin import BUNDLES, SPECS
from edge_agent.models.bundle import load_bundle, save_bundle
from edge_agent.models.chain import Chain, features_of, names_contract
from edge_agent.models.onnx_score import Scorer, ScorerConfig
from edge_agent.records import WaveformBlock

SPEC = SPECS["vibration_simulator"]


def samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SPEC.sample_rate
    tone = np.sin(2 * math.pi * 30 * t)[:, None]
    return tone + 0.1 * rng.standard_normal((n, len(SPEC.channels)))


def block(x: np.ndarray, start: float) -> WaveformBlock:
    return WaveformBlock("pump-01.de_accel", SPEC.sample_rate, SPEC.channels, start, x)


def test_offline_features_equal_the_daemon_chain(tmp_path: Path) -> None:
    x = samples(SPEC.window * 6)
    X = features_of(SPEC, x)
    names, _ = names_contract(SPEC)
    chain = Chain(dataclasses.replace(SPEC, source="pump-01.de_accel"), tmp_path)
    vectors, events = chain.process(block(x, 0.0))
    assert events == [] and len(vectors) == len(X) == 11   # (6 * 2048 - 2048) / 1024 + 1
    for fv, row in zip(vectors, X, strict=True):
        assert fv.values == dict(zip(names, map(float, row), strict=True))
    assert features_of(SPEC, x[: SPEC.window - 1]).shape == (0, len(names))


def test_swap_model_between_blocks(tmp_path: Path) -> None:
    # a second, distinguishable bundle: same graph, another name and a threshold that flags all
    b = load_bundle(BUNDLES / "vibration_simulator")
    other = dataclasses.replace(b.manifest, name="swapped", version="2",
                                thresholds={"anomaly": -1.0})
    save_bundle(tmp_path / "swapped", other, b.onnx_bytes)

    cfg = dataclasses.replace(SPEC, source="pump-01.de_accel",
                              model=ScorerConfig(path="builtin:vibration_simulator"))
    chain = Chain(cfg, tmp_path)
    with pytest.raises(RuntimeError):
        chain.swap_model(None, 0.0)  # type: ignore[arg-type]  # no slot before the first block
    first, events = chain.process(block(samples(SPEC.window * 3), 0.0))
    assert events[0].kind == "model_loaded"
    assert {fv.model.name for fv in first if fv.model} == {"vibration_simulator"}

    assert chain.slot is not None
    scorer = Scorer.load(tmp_path / "swapped", expected_names=chain.slot.expected_names,
                         expected_contract=chain.slot.expected_contract)
    ev = chain.swap_model(scorer, 10.0)
    assert ev.kind == "model_loaded" and ev.details["model"] == {"name": "swapped",
                                                                 "version": "2"}
    assert chain.model_status == "swapped v2" and chain.threshold == -1.0
    later, _ = chain.process(block(samples(SPEC.window * 2, seed=1), 3 * SPEC.window
                                   / SPEC.sample_rate))
    assert later and all(fv.model is not None and fv.model.name == "swapped" for fv in later)
    assert all(fv.is_anomaly for fv in later)
