"""Alarms and drift on the simulated pump, generated flat out (not in real time).

The pipelines are the default run's (``agent/default.toml``: shipped simulator bundles, default
alert hysteresis and drift settings); the plant is :class:`SimulatedPlant` with its default
settings except the fault script and the seed (not the training seed 1001).
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Literal

from edge_agent.drivers.simulator import Config, FaultScript, SimulatedPlant
from edge_agent.models.alerting import AlertConfig
from edge_agent.models.builtin import SPECS
from edge_agent.models.chain import Chain
from edge_agent.models.drift import DriftConfig
from edge_agent.models.onnx_score import ScorerConfig
from edge_agent.records import Event, WaveformBlock

PIPES = {"pump-01.de_accel": "vibration_simulator", "pump-01.mic": "sound_simulator"}


def default_alerts() -> dict[str, AlertConfig]:
    raw = tomllib.loads(resources.files("edge_agent.agent").joinpath("default.toml").read_text())
    return {p["source"]: AlertConfig.model_validate(p.get("alerts", {}))
            for p in raw["pipelines"]}


def simulate(seconds: float, tmp: Path, *, fault: Literal["none", "outer_race"], onset: float,
             growth: float, seed: int) -> tuple[list[Event], dict[str, float]]:
    """Every non-``model_loaded`` event of both pipelines, and each source's highest drift."""
    alerts = default_alerts()
    plant = SimulatedPlant(Config(kind="simulator", seed=seed, pace="fast",
                                  fault=FaultScript(kind=fault, onset=onset, growth=growth)),
                           start=0.0)
    chains = {src: Chain(replace(SPECS[name], source=src, alerts=alerts[src],
                                 model=ScorerConfig(path=f"builtin:{name}"),
                                 drift=DriftConfig()), tmp)
              for src, name in PIPES.items()}
    events: list[Event] = []
    top = dict.fromkeys(chains, 0.0)
    while plant.t < seconds:
        rpm = plant.shaft_hz(plant.t) * 60.0
        for rec in plant.next_block():
            if isinstance(rec, WaveformBlock) and rec.source_id in chains:
                c = chains[rec.source_id]
                _, evs = c.process(rec, rpm)
                events += [e for e in evs if e.kind != "model_loaded"]
                top[rec.source_id] = max(top[rec.source_id], c.drift.value() or 0.0
                                         if c.drift else 0.0)
    return events, top


def test_growing_fault_raises_once_per_source_and_never_clears(tmp_path: Path) -> None:
    # The scenario, shortened: 11 min healthy (past the 10 min drift window), then an
    # outer-race fault growing over 5 min.
    onset = 660.0
    events, _ = simulate(1080.0, tmp_path, fault="outer_race", onset=onset, growth=300.0, seed=5)
    before = [e for e in events if e.timestamp < onset]
    assert before == [], [(e.kind, e.source_id, e.timestamp) for e in before]
    for src in PIPES:
        kinds = [e.kind for e in events if e.source_id == src and e.kind.startswith("anomaly")]
        assert kinds == ["anomaly_raised"], (src, kinds)
    # real drift is still seen once the fault has moved the features
    drift = [e for e in events if e.kind == "drift_detected"]
    assert drift and all(e.timestamp > onset for e in drift)


def test_healthy_hour_raises_nothing(tmp_path: Path) -> None:
    events, top = simulate(3600.0, tmp_path, fault="none", onset=0.0, growth=1.0, seed=7)
    assert events == [], [(e.kind, e.source_id, e.timestamp, e.details) for e in events]
    assert all(v < DriftConfig().threshold for v in top.values()), top
