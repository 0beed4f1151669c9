"""On the real CWRU recordings: baseline learning on site, then faults vs held-out healthy.

Also checks that every shipped bundle loads under the pipeline settings it documents and that
the simulator bundles separate the simulator's scripted fault.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import TrainingError
from edge_agent.models.alerting import AlertConfig, AnomalyAlerter
from edge_agent.models.builtin import BUNDLES, SPECS
from edge_agent.models.chain import features_of, names_contract
from edge_agent.models.onnx_score import Scorer
from edge_agent.models.training.baseline import fit_baseline
from edge_agent.recordings import read_recording
from tests.tools.train_defaults import roc_auc, simulator_features

FAULTS = ("48k_Drive_End_IR007_0_109.mat", "48k_Drive_End_OR007@6_0_135.mat",
          "48k_Drive_End_B007_0_122.mat")


def test_cwru_baseline_learning_detects_real_faults(data_dir: Path, tmp_path: Path) -> None:
    """An on-site baseline at the recording's own rate (48 kHz; a site pipeline with hop 512 so
    the 5 s healthy record gives enough windows): calibrated on held-out rows for the default
    0.1 false alarms/hour. The last 20 % of the healthy record is never seen by the baseline:
    at most 1 % of its windows are over the threshold; every fault file raises an alarm under
    the default alert hysteresis."""
    spec = replace(SPECS["vibration_cwru_de"], hop=512)
    names, contract = names_contract(spec)
    x, rate = read_recording(data_dir / "cwru" / "normal_0_97.mat", sample_rate=48000.0)
    assert rate == spec.sample_rate and x.shape[0] > 200_000
    cut = int(len(x) * 0.8)
    train = features_of(spec, x[:cut])
    held = features_of(spec, x[cut:])
    bundle = fit_baseline(train, names, contract, tmp_path / "site", name="site_de", seed=3)
    sc = Scorer.load(bundle, expected_names=names, expected_contract=contract)
    cal = sc.manifest.score["calibration"]
    assert cal["false_alarms_per_hour"] == 0.1 and cal["calibration_windows"] >= 80
    assert sc.manifest.source["fit_rows"] + cal["calibration_windows"] == len(train)
    s_held = sc.score(held)
    over = float(np.mean(s_held > sc.threshold))
    period = spec.hop / spec.sample_rate
    flagged = {}
    for f in FAULTS:
        xf, _ = read_recording(data_dir / "cwru" / f)
        s = sc.score(features_of(spec, xf))
        assert roc_auc(s_held, s) >= 0.95, f
        al = AnomalyAlerter("cwru.de", AlertConfig())
        evs = [al.observe(float(v), sc.threshold, sc.ref, i * period) for i, v in enumerate(s)]
        flagged[f] = ([e.kind for e in evs if e is not None], float(np.mean(s > sc.threshold)))
    print("CWRU held-out healthy windows over threshold:", over, "faults:", flagged)
    assert over <= 0.01, over
    assert all(kinds == ["anomaly_raised"] for kinds, _ in flagged.values()), flagged


def test_baseline_below_the_minimum_is_refused(data_dir: Path, tmp_path: Path) -> None:
    spec = SPECS["vibration_cwru_de"]
    names, contract = names_contract(spec)
    x, _ = read_recording(data_dir / "cwru" / "normal_0_97.mat", sample_rate=48000.0)
    X = features_of(spec, x[: 35 * 1024 + 2048])  # the 34-window baseline
    with pytest.raises(TrainingError, match=r"at least 200 finite feature vectors.*collect"):
        fit_baseline(X, names, contract, tmp_path / "b", name="b")


def test_roc_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300).round(1), rng.normal(0.7, size=200).round(1)  # with ties
    want = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b])
    assert roc_auc(a, b) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shipped_bundles_load_under_their_pipeline_settings(name: str) -> None:
    names, contract = names_contract(SPECS[name])
    sc = Scorer.load(BUNDLES / name, expected_names=names, expected_contract=contract)
    graph = "band_alarm" if name == "sound_mimii_fan" else "fast_tree_ensemble"
    assert sc.ref.name == name and sc.manifest.score["graph"] == graph
    assert sc.manifest.score["verified_max_abs_diff"] <= 1e-5
    assert (BUNDLES / name / "model.onnx").stat().st_size < 600_000


def test_simulator_bundles_fit_the_simulator() -> None:
    Xv, Xm, sev_v, sev_m = simulator_features(100.0, fault="outer_race", seed=7)
    for name, X, sev in (("vibration_simulator", Xv, sev_v), ("sound_simulator", Xm, sev_m)):
        names, contract = names_contract(SPECS[name])
        sc = Scorer.load(BUNDLES / name, expected_names=names, expected_contract=contract)
        s = sc.score(X)
        healthy, faulty = s[sev == 0], s[sev >= 0.5]
        assert np.mean(healthy > sc.threshold) < 0.05, name
        assert roc_auc(healthy, faulty) > 0.95, name
