"""Hysteresis sequences and drift events."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from edge_agent.models.alerting import AlertConfig, AnomalyAlerter, Hysteresis
from edge_agent.models.bundle import load_bundle
from edge_agent.models.drift import DriftConfig, DriftMonitor, ks_distance, psi
from edge_agent.records import ModelRef

from .conftest import NAMES, training_matrix


def run(h: Hysteresis, seq: str, dt: float = 1.0) -> list[str | None]:
    """One window per character every ``dt`` s: 1 over, 0 under the clear level, - deadband."""
    return [h.update(c == "1", i * dt, is_under=c == "0") for i, c in enumerate(seq)]


def test_hysteresis_counts_seconds_not_windows() -> None:
    h = Hysteresis(raise_after=2.0, clear_after=1.0)
    out = run(h, "110111" "0101" "00" "1")
    assert out == [None, None, None, None, None, "raised",
                   None, None, None, None, None, "cleared", None]
    assert not h.active
    # The same 2 s at 10 windows/s take 21 windows, not 3.
    h = Hysteresis(2.0, 1.0)
    out = run(h, "1" * 21, dt=0.1)
    assert out.index("raised") == 20
    h = Hysteresis(0.0, 0.0)
    assert run(h, "1100") == ["raised", None, "cleared", None]
    h = Hysteresis(1.0, 1.0)
    h.update(True, 10.0)
    h.update(True, 11.0)
    assert h.active
    h.reset()
    assert not h.active and run(h, "1") == [None]
    with pytest.raises(ValueError):
        Hysteresis(-1.0, 1.0)


def test_deadband_is_not_clear() -> None:
    h = Hysteresis(raise_after=2.0, clear_after=2.0)
    # the deadband alone starts nothing; over, then deadband: the run over goes on
    assert run(h, "--" "1-" "0" "1-1") == [None] * 7 + ["raised"]
    # an active alarm clears only after 2 s under the clear level throughout
    assert [h.update(c == "1", 8.0 + i, is_under=c == "0")
            for i, c in enumerate("0-0-00" "0")] == [None] * 6 + ["cleared"]


def test_alerter_events_carry_score_threshold_model() -> None:
    cfg = AlertConfig.model_validate({"raise_after": 1, "clear_after": "1s", "clear_ratio": 0.8,
                                      "severity": "critical"})
    al = AnomalyAlerter("pump.de", cfg)
    ref = ModelRef("vib", "3")
    # 0.45 is under the threshold 0.5 but above the clear level 0.4: it clears nothing
    scores = [0.9, None, float("nan"), 0.8, 0.45, 0.95, 0.45, 0.45, 0.1, 0.2]
    evs = [al.observe(s, 0.5, ref, float(i)) for i, s in enumerate(scores)]
    kinds = [(i, e.kind) for i, e in enumerate(evs) if e is not None]
    assert kinds == [(3, "anomaly_raised"), (9, "anomaly_cleared")]
    raised = evs[3]
    assert raised is not None and raised.severity == "critical" and raised.timestamp == 3.0
    assert raised.details == {"score": 0.8, "threshold": 0.5, "clear_threshold": 0.4,
                              "model": {"name": "vib", "version": "3"}, "seconds": 1.0}
    cleared = evs[9]
    assert cleared is not None and cleared.severity == "info"
    assert AlertConfig(clear_threshold=0.3).clear_level(0.5) == 0.3
    assert AlertConfig(clear_ratio=0.9).clear_level(-2.0) == pytest.approx(-2.2)


def test_psi_and_ks_basics() -> None:
    rng = np.random.default_rng(0)
    levels = np.linspace(0, 1, 21)
    train = rng.normal(size=20000)
    q = np.quantile(train, levels)
    edges = q[2:-1:2]
    same = rng.normal(size=2000)
    shifted = same + 1.0
    assert psi(same, edges, np.full(10, 0.1)) < 0.02
    assert psi(shifted, edges, np.full(10, 0.1)) > 0.5
    assert ks_distance(same, q, levels) < 0.05
    assert ks_distance(shifted, q, levels) == pytest.approx(0.38, abs=0.04)


@pytest.mark.parametrize("method", ["psi", "ks"])
def test_drift_event_raised_and_cleared(bundle_dir: Path, method: Literal["psi", "ks"]) -> None:
    m = load_bundle(bundle_dir).manifest
    cfg = DriftConfig(method=method, window=300, every=10,
                      threshold=0.25 if method == "psi" else 0.2)
    mon = DriftMonitor("pump.de", m, cfg)
    healthy = training_matrix(600, seed=11)  # same distribution as training, new draws
    events = [mon.update(row, float(i)) for i, row in enumerate(healthy)]
    assert all(e is None for e in events) and mon.value() is not None
    assert mon.value() < cfg.threshold  # type: ignore[operator]
    drifted = healthy.copy()
    drifted[:, 5] += 3 * healthy[:, 5].std()  # one feature moves by 3 sigma
    events = [mon.update(dict(zip(NAMES, row, strict=True)), 1000.0 + i)
              for i, row in enumerate(drifted[:301])]  # after a gap: refilled first
    got = [e for e in events if e is not None]
    assert len(got) == 1 and got[0].kind == "drift_detected"
    d = got[0].details
    assert d["feature"] == NAMES[5] and d["value"] > cfg.threshold and d["method"] == method
    assert d["model"] == {"name": "vib_test", "version": "7"} and d["ks_pvalue"] < 1e-6
    bad = {**dict(zip(NAMES, drifted[0], strict=True)), NAMES[0]: float("nan")}
    assert mon.update(bad, 2000.0) is None  # non-finite vectors are skipped
    events = [mon.update(row, 3000.0 + i) for i, row in enumerate(healthy[:400])]
    assert [e.kind for e in events if e is not None] == ["drift_cleared"]
    with pytest.raises(ValueError, match="21 values"):
        mon.update(np.zeros(21), 0.0)
