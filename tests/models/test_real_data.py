"""On the real CWRU recordings: baseline learning on site, then faults vs held-out healthy.

Also checks that every shipped bundle loads under the pipeline settings it documents and that
the simulator bundles separate the simulator's scripted fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    spec = SPECS["vibration_cwru_de"]
    names, contract = names_contract(spec)
    x, rate = read_recording(data_dir / "cwru" / "normal_0_97.mat", sample_rate=48000.0)
    assert rate == spec.sample_rate and x.shape[0] > 200_000
    cut = int(len(x) * 0.6)
    train = features_of(spec, x[:cut])
    held = features_of(spec, x[cut:])
    bundle = fit_baseline(train, names, contract, tmp_path / "site", name="site_de",
                          quantile=0.99, seed=3)
    sc = Scorer.load(bundle, expected_names=names, expected_contract=contract)
    s_held = sc.score(held)
    aucs = {}
    for f in FAULTS:
        xf, _ = read_recording(data_dir / "cwru" / f)
        aucs[f] = roc_auc(s_held, sc.score(features_of(spec, xf)))
    print("CWRU ROC-AUC (baseline on first 60 % healthy):", aucs)
    assert min(aucs.values()) >= 0.95, aucs
    # The threshold from the training quantile rarely fires on unseen healthy windows...
    assert np.mean(s_held > sc.threshold) < 0.1
    # ...and an alerter raises on a fault recording.
    xf, _ = read_recording(data_dir / "cwru" / FAULTS[1])
    al = AnomalyAlerter("cwru.de", AlertConfig(raise_after=3, clear_after=3))
    evs = [al.observe(float(s), sc.threshold, sc.ref, i)
           for i, s in enumerate(sc.score(features_of(spec, xf)))]
    assert [e.kind for e in evs if e is not None] == ["anomaly_raised"]


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
    graph = "skl2onnx" if name == "sound_mimii_fan" else "fast_tree_ensemble"  # OneClassSVM
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
