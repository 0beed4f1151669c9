"""Simulated plant: deterministic under a seed, physically plausible, the fault really grows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import signal, stats

from edge_agent.drivers.base import DriverOutput
from edge_agent.drivers.simulator import Config, SimulatedPlant
from edge_agent.records import Reading, WaveformBlock
from edge_agent.settings import parse


def plant(**over: object) -> SimulatedPlant:
    raw = {"kind": "simulator", "fault": {"onset": "5s", "growth": "5s"}, **over}
    return SimulatedPlant(parse(Config, raw), start=1_800_000_000.0)


def run(p: SimulatedPlant, seconds: float) -> list[DriverOutput]:
    return [p.next_block() for _ in range(int(seconds / 0.5))]


def wave(out: DriverOutput) -> WaveformBlock:
    """The waveform block a simulator step starts with."""
    assert isinstance(out[0], WaveformBlock)
    return out[0]


def test_deterministic_under_seed() -> None:
    a, b, c = plant(), plant(), plant(seed=7)
    for _ in range(4):
        xa, xb, xc = a.next_block(), b.next_block(), c.next_block()
        assert isinstance(xa[0], WaveformBlock) and isinstance(xb[0], WaveformBlock)
        assert isinstance(xc[0], WaveformBlock)
        np.testing.assert_array_equal(xa[0].samples, xb[0].samples)
        assert not np.array_equal(xa[0].samples, xc[0].samples)


def test_blocks_are_contiguous_and_timestamped() -> None:
    p = plant()
    blocks = [out[0] for out in run(p, 3)]
    for prev, nxt in itertools.pairwise(blocks):
        assert isinstance(prev, WaveformBlock) and isinstance(nxt, WaveformBlock)
        assert nxt.start == pytest.approx(prev.end, abs=1e-9)
    first = blocks[0]
    assert isinstance(first, WaveformBlock)
    assert first.start == 1_800_000_000.0 and first.channels == ("h", "v")
    assert first.samples.shape == (10_000, 2) and first.sample_rate == 20_000


def test_outer_race_fault_shows_at_bpfo_in_envelope_after_onset() -> None:
    p = plant()
    healthy = np.concatenate([wave(o).samples[:, 0] for o in run(p, 4)])
    run(p, 6)
    faulty = np.concatenate([wave(o).samples[:, 0] for o in run(p, 4)])
    assert stats.kurtosis(healthy) < 1.0 < 5.0 < stats.kurtosis(faulty)
    fs = 20_000
    from edge_agent.bearing import defect_frequencies

    bpfo = defect_frequencies(p.cfg.bearing, p.cfg.shaft_speed_rpm / 60)["bpfo"]
    sos = signal.butter(4, [2500, 4500], "bandpass", fs=fs, output="sos")
    env = np.abs(signal.hilbert(signal.sosfiltfilt(sos, faulty)))
    spec = np.abs(np.fft.rfft(env - env.mean()))
    freqs = np.fft.rfftfreq(len(env), 1 / fs)
    band = (freqs > 20) & (freqs < 400)
    peak = freqs[band][np.argmax(spec[band])]
    assert abs(peak - bpfo) < 3.0, (peak, bpfo)


def test_process_values_are_plausible_and_drift_with_fault() -> None:
    p = plant()
    outs = run(p, 20)
    temps = [r.value for o in outs for r in o if isinstance(r, Reading)
             and r.sensor_id.endswith("bearing_temp")]
    speeds = [r.value for o in outs for r in o if isinstance(r, Reading)
              and r.sensor_id.endswith("shaft_speed")]
    assert all(t is not None and 30 < t < 90 for t in temps)
    assert all(s is not None and math.isclose(s, 1800, rel_tol=0.01) for s in speeds)
    first, last = temps[0], temps[-1]
    assert first is not None and last is not None and last > first  # heats up as the defect grows


def test_config_problems_named() -> None:
    from edge_agent.settings import check

    cross = {str(x) for x in check(Config, {"kind": "simulator", "resonance_hz": 15000})}
    assert cross == {"resonance_hz: must be below half of vibration_rate"}
    problems = {str(x) for x in check(Config, {"kind": "simulator",
                                               "bearing": {"n_balls": 9, "ball_diameter": 50,
                                                           "pitch_diameter": 39},
                                               "block": "0s"})}
    assert "bearing.ball_diameter: must be smaller than pitch_diameter" in problems
    assert "block: must be > 0" in problems


def test_waveforms_are_continuous_across_blocks() -> None:
    p = plant(noise_g=0.0, fault={"kind": "none"})
    blocks = [o[0] for o in run(p, 3)]
    x = np.concatenate([b.samples for b in blocks if isinstance(b, WaveformBlock)])
    step = np.abs(np.diff(x, axis=0))
    edges = np.cumsum([b.n_samples for b in blocks if isinstance(b, WaveformBlock)])[:-1] - 1
    assert step[edges].max() <= 1.05 * np.delete(step, edges, axis=0).max()
