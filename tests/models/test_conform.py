"""Analysis rate and sample unit: faster sources resampled block by block (equal to a one-shot
resample), slower ones and unknown units refused with one event and a ``cannot_score`` reason;
g <-> m/s2 converted; the unit is part of the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from edge_agent.agent.config import PipelineConfig
from edge_agent.models.builtin import BUNDLES
from edge_agent.models.bundle import load_bundle
from edge_agent.models.chain import Chain
from edge_agent.models.dsp.features import G
from edge_agent.models.dsp.resample import StreamResampler
from edge_agent.records import Event, FeatureVector, WaveformBlock
from edge_agent.settings import parse


def blocks(x: np.ndarray, rate: float, t0: float = 100.0, seed: int = 0, unit: str = "g",
           ch: tuple[str, ...] = ("de",)) -> list[WaveformBlock]:
    rng, i, out = np.random.default_rng(seed), 0, []
    while i < len(x):
        n = int(rng.integers(1, 6000))
        out.append(WaveformBlock("m.de", rate, ch, t0 + i / rate, x[i:i + n], unit))
        i += n
    return out


@pytest.mark.parametrize(("fin", "fout"), [(48000.0, 12000.0), (44100.0, 16000.0),
                                           (96000.0, 48000.0)])
def test_block_by_block_equals_one_shot(fin: float, fout: float) -> None:
    t = np.arange(int(fin * 1.5)) / fin
    x = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 0.37 * fout * t)], axis=1)
    rs = StreamResampler(fin, fout)
    outs = [o for b in blocks(x, fin, ch=("a", "b")) if (o := rs.push(b)) is not None]
    y = np.concatenate([o.samples for o in outs])
    ref = resample_poly(x, rs.up, rs.down, axis=0)
    lag = rs.half_len // rs.up + 1                    # held back at the stream's end
    assert len(ref) - len(y) <= lag // rs.down * rs.up + rs.up + 1
    np.testing.assert_allclose(y, ref[:len(y)], atol=1e-12)
    n = 0
    for o in outs:                                    # timestamps follow the output index
        assert o.sample_rate == fout and o.start == pytest.approx(100.0 + n / fout, abs=1e-9)
        n += o.n_samples
    # the tone above the new Nyquist is filtered out, the 1 kHz one kept
    mid = y[len(y) // 4: 3 * len(y) // 4]
    assert np.std(mid[:, 0]) == pytest.approx(np.sqrt(0.5), rel=1e-2)
    if 0.37 * fout > fout / 2:
        assert np.std(mid[:, 1]) < 0.01


def test_a_gap_restarts_the_stream() -> None:
    rs = StreamResampler(48000.0, 12000.0)
    x = np.random.default_rng(1).normal(size=(48000, 1))
    a = rs.push(WaveformBlock("s", 48000.0, ("de",), 0.0, x))
    b = rs.push(WaveformBlock("s", 48000.0, ("de",), 5.0, x))      # 4 s gap
    assert a is not None and b is not None
    assert a.start == 0.0 and b.start == 5.0
    np.testing.assert_allclose(a.samples, b.samples)


def pipe(**extra: object) -> PipelineConfig:
    raw = {"source": "m.de", "features": {"kind": "vibration"},
           "model": {"path": "builtin:vibration_cwru_de"}, **extra}
    return parse(PipelineConfig, raw, "pipelines[0]")


def run(chain: Chain, bl: list[WaveformBlock]) -> tuple[list[FeatureVector], list[Event]]:
    vs, es = [], []
    for b in bl:
        v, e = chain.process(b)
        vs += v
        es += [x for x in e if not x.kind.startswith("anomaly_")]  # noise is anomalous here
    return vs, es


def test_a_faster_source_is_resampled_to_the_analysis_rate(tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(scale=0.07, size=(96000 * 2, 1))
    vs, es = run(Chain(pipe(sample_rate=48000.0), tmp_path), blocks(x, 96000.0))
    assert [e.kind for e in es] == ["model_loaded"]
    assert vs and all(v.score is not None for v in vs)
    assert vs[0].window_start == pytest.approx(100.0) and \
        vs[1].window_start - vs[0].window_start == pytest.approx(1024 / 48000.0)
    # the bundle records the analysis rate it was trained at
    assert load_bundle(BUNDLES / "vibration_cwru_de").manifest.extractor["sample_rate"] == 48000
    # without an analysis rate: refused, with the reason and the remedy, in stats too
    ch = Chain(pipe(), tmp_path)
    vs, es = run(ch, blocks(x, 96000.0))
    assert [e.kind for e in es] == ["model_refused"]
    assert "sample_rate" in es[0].details["reason"] and "[[pipelines]]" in es[0].details["reason"]
    assert vs and all(v.score is None for v in vs)
    assert "sample_rate" in ch.stats()["cannot_score"]


def test_a_slower_source_or_unknown_unit_cannot_be_scored(tmp_path: Path) -> None:
    x = np.random.default_rng(3).normal(scale=0.07, size=(24000, 1))
    ch = Chain(pipe(sample_rate=48000.0), tmp_path)
    vs, es = run(ch, blocks(x, 24000.0))
    assert vs == [] and [e.kind for e in es] == ["cannot_score"]
    assert "slower than the pipeline's analysis rate" in es[0].details["reason"]
    assert "slower" in ch.stats()["cannot_score"]
    ch2 = Chain(pipe(), tmp_path)
    vs, es = run(ch2, blocks(x, 48000.0, unit="Pa"))
    assert vs == [] and [e.kind for e in es] == ["cannot_score"]
    assert "'Pa'" in ch2.stats()["cannot_score"]
    vs, es = run(ch2, blocks(x, 48000.0, t0=200.0))          # back to g: accepted again
    assert [e.kind for e in es] == ["input_accepted", "model_loaded"]


def test_units_convert_and_are_part_of_the_contract(tmp_path: Path) -> None:
    x = np.random.default_rng(4).normal(scale=0.07, size=(48000, 1))
    in_g, _ = run(Chain(pipe(), tmp_path), blocks(x, 48000.0))
    in_ms2, es = run(Chain(pipe(), tmp_path), blocks(x * G, 48000.0, unit="m/s2"))
    assert [e.kind for e in es] == ["model_loaded"]
    for a, b in zip(in_g, in_ms2, strict=True):
        assert b.values == pytest.approx(a.values, rel=1e-9, abs=1e-12)
        assert b.score == pytest.approx(a.score, rel=1e-6)
    # a pipeline computing features in m/s2 refuses the model trained in g
    ch = Chain(pipe(features={"kind": "vibration", "accel_unit": "m/s2"}), tmp_path)
    _, es = run(ch, blocks(x * G, 48000.0, unit="m/s2"))
    assert [e.kind for e in es] == ["model_refused"]
    assert "'accel_unit': model was trained with 'g'" in es[0].details["reason"]


def test_cannot_score_is_on_the_metrics(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from edge_agent.agent.metrics import registry

    ch = Chain(pipe(sample_rate=48000.0), tmp_path)
    run(ch, blocks(np.zeros((24000, 1)), 24000.0))
    st = ch.stats()
    snap = {"gateway": {"version": "1", "id": "g", "started": 5.0, "disk": {}},
            "health": {"status": "ok"}, "pipeline": {}, "sync": {}, "mqtt": {},
            "sources": [{"id": "m.de", "model": st["model"], "score": None,
                         "cannot_score": st["cannot_score"]}]}
    text = generate_latest(registry(lambda: snap)).decode()
    line = next(x for x in text.splitlines() if x.startswith("edge_agent_cannot_score{"))
    assert 'source="m.de"' in line and "slower than the pipeline" in line and \
        line.endswith(" 1.0")


def test_a_bundle_from_before_units_loads_as_g(tmp_path: Path) -> None:
    """Commissioned baselines on gateways predate ``accel_unit`` in every vibration contract:
    they were computed in the default g and keep loading; in m/s2 they are refused."""
    import json
    import shutil

    from edge_agent.models.onnx_score import contract_differences

    old = tmp_path / "old"
    shutil.copytree(BUNDLES / "vibration_cwru_de", old)
    man = json.loads((old / "manifest.json").read_text())
    del man["extractor"]["accel_unit"]
    (old / "manifest.json").write_text(json.dumps(man))
    m = load_bundle(old).manifest
    contract = dict(load_bundle(BUNDLES / "vibration_cwru_de").manifest.extractor)
    assert contract_differences(m, m.names, contract) == []
    assert contract_differences(m, m.names, {**contract, "accel_unit": "m/s2"})
