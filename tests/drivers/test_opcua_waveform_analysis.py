"""An OPC-UA array node feeds the same window → feature path as every other waveform source.

A real asyncua server publishes a continuous sine as consecutive 2048-sample arrays (sample
rate on its own node); the OPC-UA driver runs under the agent's run_driver; its WaveformBlocks
go through :class:`edge_agent.agent.analysis.Analysis` built from a PipelineConfig.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent.analysis import Analysis
from edge_agent.agent.config import PipelineConfig
from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import DriverOutput
from edge_agent.drivers.opcua import Config, create
from edge_agent.records import Event, FeatureVector, WaveformBlock
from edge_agent.settings import parse
from tests.conftest import free_port
from tests.drivers.opcua_server import PlantServer, Wave, nid

pytestmark = pytest.mark.timeout(60)

# 1237 Hz sits between FFT bins (10240 / 2048 = 5 Hz apart): an honest "within one bin".
WAVE = Wave(frequency=1237.0, amplitude=0.8, rate=10240.0, n=2048, speed=2.0)
WINDOW, HOP = 2048, 1024
N_VECTORS = 16


async def test_array_node_through_run_driver_into_analysis(ua_shelf: Path,
                                                           tmp_path: Path) -> None:
    plant = PlantServer(free_port(), shelf=ua_shelf, wave=WAVE)
    await plant.start()
    cfg = parse(Config, {"kind": "opcua", "name": "ua", "endpoint": plant.url,
                         "nodes": [{"sensor_id": "vib", "node_id": nid("Wave"), "unit": "g",
                                    "sensor_type": "vibration", "waveform": True,
                                    "sample_rate_node": nid("Wave.Rate"),
                                    "publishing_interval": "50ms", "queue_size": 8}]})
    assert cfg.waveform_sources() == ("vib",)
    pipeline = parse(PipelineConfig, {"source": "vib", "features": {"kind": "vibration"},
                                      "window": WINDOW, "hop": HOP})
    analysis = Analysis(pipeline, tmp_path)
    blocks: list[WaveformBlock] = []
    vectors: list[FeatureVector] = []
    events: list[Event] = []
    enough = asyncio.Event()

    async def emit(out: DriverOutput) -> None:
        for rec in out:
            assert isinstance(rec, WaveformBlock), rec
            blocks.append(rec)
            fvs, evs = analysis.process(rec)
            vectors.extend(fvs)
            events.extend(evs)
        if len(vectors) >= N_VECTORS:
            enough.set()

    task = asyncio.create_task(run_driver(create(cfg), emit, poll_interval=None,
                                          backoff=Backoff(initial=0.05, maximum=0.5)))
    try:
        await asyncio.wait_for(enough.wait(), 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await plant.stop()

    b = blocks[0]
    assert b.source_id == "vib" and b.sample_rate == WAVE.rate and b.channels == ("x",)
    assert b.samples.shape == (WAVE.n, 1) and b.unit == "g"
    # each block's start time is the server's sample clock at its first sample: the samples
    # are the sine at exactly those sample indices (off by a block would shift the phase)
    for blk in blocks[:3]:
        index = (blk.start - plant.wave_t0) * WAVE.rate
        assert abs(index - round(index)) < 0.05 and round(index) % WAVE.n == 0
        k = round(index) + np.arange(WAVE.n)
        np.testing.assert_allclose(
            blk.samples[:, 0], WAVE.amplitude * np.sin(2 * np.pi * WAVE.frequency * k / WAVE.rate),
            atol=1e-9)
    assert not events, events                          # no misconfiguration, no model events
    assert not analysis.windower.resets, analysis.windower.resets   # blocks joined seamlessly
    assert analysis.windows == len(vectors) == 2 * len(blocks) - 1

    bin_hz = WAVE.rate / WINDOW
    for i, fv in enumerate(vectors):
        assert fv.source_id == "vib" and fv.score is None
        f = fv.values
        assert abs(f["x_dominant_frequency"] - WAVE.frequency) <= bin_hz, (i, f)
        assert f["x_rms"] == pytest.approx(WAVE.amplitude / math.sqrt(2), rel=2e-3), (i, f)
        assert abs(f["x_mean"]) < 0.01 * WAVE.amplitude
        assert f["x_peak_to_peak"] == pytest.approx(2 * WAVE.amplitude, rel=0.01)
        assert fv.window_end - fv.window_start == pytest.approx(WINDOW / WAVE.rate, abs=1e-6)
    starts = np.array([fv.window_start for fv in vectors])
    np.testing.assert_allclose(np.diff(starts), HOP / WAVE.rate, atol=1e-6)
    assert starts[0] == pytest.approx(blocks[0].start, abs=1e-6)
