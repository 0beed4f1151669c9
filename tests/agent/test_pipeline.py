"""The pipeline core with fakes on each side: fake drivers in, a recording buffer out."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import config
from edge_agent.agent.analysis import Analysis, BaselineLearned
from edge_agent.agent.pipeline import Pipeline
from edge_agent.drivers.base import DriverHealth, DriverOutput
from edge_agent.records import Event, FeatureVector, Reading, ReadingBlock, WaveformBlock
from edge_agent.settings import parse
from edge_agent.sync.buffer import Buffer, BufferConfig


class FakeBuffer(Buffer):
    """Records what was committed; ``put`` returns after a tiny delay, like a real commit.
    A :class:`Buffer` that is never started (no database): only what the pipeline calls is
    overridden; ``last_timestamps`` stays the base's (empty: nothing stored before)."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent/fake-buffer.db"), BufferConfig())
        self.readings: list[Reading] = []
        self.features: list[FeatureVector] = []
        self.events: list[Event] = []

    async def put(self, records: Sequence[Reading | ReadingBlock | FeatureVector | Event]
                  ) -> None:
        await asyncio.sleep(0.001)
        for r in records:
            lists: dict[type, list[Any]] = {Reading: self.readings,
                                             FeatureVector: self.features, Event: self.events}
            kept = lists[type(r)]
            kept.append(r)

    def stats(self) -> dict[str, object]:
        return {}


class FakeDriver:
    """Streams a sine waveform and a counter reading per read; optionally crashes once."""

    streaming = True

    def __init__(self, name: str, crash_at: int | None = None, blocks: int = 10**9,
                 nan_every: int = 0) -> None:
        self.name = name
        self.crash_at = crash_at
        self.blocks = blocks
        self.nan_every = nan_every
        self.n = 0
        self.opens = 0
        self.closes = 0
        self._h = DriverHealth(name, "fake")
        self.t0 = 1_800_000_000.0

    async def open(self) -> None:
        self.opens += 1

    async def read(self) -> DriverOutput:
        await asyncio.sleep(0.002)
        if self.n >= self.blocks:
            await asyncio.Event().wait()  # finished: wait to be cancelled
        self.n += 1
        if self.crash_at is not None and self.n == self.crash_at:
            raise RuntimeError("driver bug")
        fs, n = 10_000.0, 1000
        start = self.t0 + (self.n - 1) * n / fs
        t = start + np.arange(n) / fs
        x = np.sin(2 * math.pi * 500.0 * t)
        value = math.nan if self.nan_every and self.n % self.nan_every == 0 else float(self.n)
        self._h.ok(2)
        return [WaveformBlock(f"{self.name}.wave", fs, ("x",), start, x[:, None]),
                Reading(f"{self.name}.count", "counter", value, "", start)]

    async def close(self) -> None:
        self.closes += 1

    def health(self) -> DriverHealth:
        return self._h


def make_config(tmp_path: Path, sources: list[str], **pipeline: Any) -> config.AgentConfig:
    raw = {"agent": {"state_dir": str(tmp_path)},
           "reconnect": {"initial": "10ms", "maximum": "50ms"},
           "pipelines": [{"source": s, "window": 1000, "hop": 500,
                          "features": {"kind": "vibration"}, **pipeline} for s in sources]}
    return parse(config.AgentConfig, raw)


async def run_for(p: Pipeline, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(p.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_readings_and_features_flow_once_and_drivers_close(tmp_path: Path) -> None:
    drivers = [FakeDriver("a", blocks=40), FakeDriver("b", blocks=40)]
    buf = FakeBuffer()
    p = Pipeline(make_config(tmp_path, ["a.wave", "b.wave"]), drivers, buf, None)
    await run_for(p, 0.6)
    for d in drivers:
        got = [r.value for r in buf.readings if r.sensor_id == f"{d.name}.count"]
        assert got == [float(i) for i in range(1, 41)]  # every reading, once, in order
        assert d.closes >= 1
        fvs = [f for f in buf.features if f.source_id == f"{d.name}.wave"]
        assert len(fvs) == 79  # 40 000 samples, window 1000, hop 500
        assert all(abs(f.values["x_dominant_frequency"] - 500.0) < 10 for f in fvs)
        assert all(f.model is None and f.score is None for f in fvs)  # no model configured
    kinds = [e.kind for e in buf.events]
    assert kinds[0] == "agent_started" and kinds[-1] == "agent_stopped"


async def test_crashed_driver_is_restarted_and_others_keep_running(tmp_path: Path) -> None:
    bad, good = FakeDriver("bad", crash_at=3), FakeDriver("good")
    buf = FakeBuffer()
    p = Pipeline(make_config(tmp_path, []), [bad, good], buf, None)
    await run_for(p, 0.5)
    assert p.driver_restarts == {"bad": 1, "good": 0}
    assert bad.opens >= 2 and good.opens == 1  # only the crashed one was restarted
    assert any(e.kind == "driver_crashed" and e.source_id == "bad" for e in buf.events)
    good_values = [r.value for r in buf.readings if r.sensor_id == "good.count"]
    assert good_values == [float(i) for i in range(1, len(good_values) + 1)]
    assert len(good_values) > 50
    bad_values = [r.value for r in buf.readings if r.sensor_id == "bad.count"]
    assert bad_values[:2] == [1.0, 2.0] and len(bad_values) > 10  # it came back


async def test_nan_readings_never_leave_as_numbers(tmp_path: Path) -> None:
    d = FakeDriver("n", blocks=20, nan_every=4)
    buf = FakeBuffer()
    p = Pipeline(make_config(tmp_path, []), [d], buf, None)
    await run_for(p, 0.3)
    bad = [r for r in buf.readings if r.value is None]
    assert len(bad) == 5 and len(buf.readings) == 20
    assert all(r.quality == 0.0 and "non-finite" in r.metadata["reason"] for r in bad)


async def test_waveform_queue_overflow_is_bounded_and_counted(tmp_path: Path) -> None:
    raw = {"agent": {"state_dir": str(tmp_path)},
           "queues": {"waveforms": {"size": 2, "overflow": "drop_oldest"}},
           "pipelines": [{"source": "w.wave", "window": 1000, "hop": 1000,
                          "features": {"kind": "vibration"}}]}
    cfg = parse(config.AgentConfig, raw)

    class SlowBuffer(FakeBuffer):
        async def put(self, records: Sequence[Reading | ReadingBlock | FeatureVector | Event]
                  ) -> None:
            await asyncio.sleep(0.05)
            await super().put(records)

    p = Pipeline(cfg, [FakeDriver("w", blocks=200)], SlowBuffer(), None)
    await run_for(p, 0.4)
    st = p.stats()["queues"]["waveforms"]
    assert st["depth"] <= 2 and st["dropped"] > 0  # bounded, and what was shed is counted


def test_refused_model_keeps_features_flowing(tmp_path: Path) -> None:
    # The shipped simulator model expects h/v channels at 20 kHz: a 1-channel 10 kHz source
    # must be refused with the mismatch named, and the features still produced.
    cfg = parse(config.PipelineConfig, {"source": "a.wave", "window": 1000, "hop": 500,
                                        "features": {"kind": "vibration"},
                                        "model": {"path": "builtin:vibration_simulator"}})
    an = Analysis(cfg, tmp_path)
    fs, n = 10_000.0, 5000
    block = WaveformBlock("a.wave", fs, ("x",), time.time(),
                          np.sin(np.arange(n) / fs * 2 * math.pi * 200)[:, None])
    vectors, events = an.process(block)
    assert len(vectors) == 9 and all(v.score is None for v in vectors)
    refused = [e for e in events if e.kind == "model_refused"]
    assert refused and "features" in refused[0].details["reason"]
    assert an.stats()["model"].startswith("refused")


def test_commissioning_learns_a_baseline_then_scores(tmp_path: Path) -> None:
    cfg = parse(config.PipelineConfig, {
        "source": "a.wave", "window": 1000, "hop": 500, "features": {"kind": "vibration"},
        "commissioning": {"enabled": True, "duration": "1s", "min_windows": 200,
                          "max_windows": 220, "n_estimators": 20, "out_dir": "models"}})
    an = Analysis(cfg, tmp_path)
    rng = np.random.default_rng(0)
    fs, n, t0 = 10_000.0, 1000, 1_800_000_000.0
    events: list[Event] = []

    def block(i: int, impulsive: bool = False) -> WaveformBlock:
        t = np.arange(n) / fs
        x = np.sin(2 * math.pi * 300 * t) + 0.1 * rng.standard_normal(n)
        if impulsive:
            x[::97] += 8.0
        return WaveformBlock("a.wave", fs, ("x",), t0 + i * n / fs, x[:, None])

    i = 0
    while not an.baseline_ready:
        events += an.process(block(i))[1]
        i += 1
        assert i < 300
    result = an.fit_baseline()
    assert isinstance(result, BaselineLearned)  # a typed result, never Path | ModelError
    assert result.path.is_relative_to(tmp_path / "models")
    events += an.baseline_done(result, t0)
    kinds = [e.kind for e in events]
    assert "baseline_learned" in kinds and "model_loaded" in kinds
    healthy = [v for k in range(20) for v in an.process(block(i + k))[0]]
    faulty = [v for k in range(20, 40) for v in an.process(block(i + k, True))[0]]
    assert all(v.score is not None for v in healthy + faulty)
    assert sum(bool(v.is_anomaly) for v in healthy) <= 2
    assert sum(bool(v.is_anomaly) for v in faulty) >= len(faulty) - 2


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_waveform_samples_mark_the_window(tmp_path: Path, bad: float) -> None:
    cfg = parse(config.PipelineConfig, {"source": "a.wave", "window": 1000, "hop": 1000,
                                        "features": {"kind": "vibration"}})
    an = Analysis(cfg, tmp_path)
    x = np.ones((3000, 1))
    x[1500, 0] = bad
    vectors, _ = an.process(WaveformBlock("a.wave", 10_000.0, ("x",), 0.0, x))
    assert len(vectors) == 3
    assert vectors[1].values == {}  # nothing non-finite leaves the agent
    assert vectors[0].values and vectors[2].values
    assert an.stats()["invalid_windows"] == 1
