"""MIMII fan id_00, on-site baseline from normal clips only, per held-out split (not a test).

From the repository root (needs the ``[train]`` extra and the shared recordings)::

    .venv/bin/python tests/tools/onsite_mimii.py [DECISION_SECONDS]

Four rotations: 3 normal clips held out, 9 give the baseline (``fit_baseline``: time-order split
fit 60 / calibrate 20 / check 20, 0.1 false alarms per hour), through a site pipeline with the
sound defaults at hop 4000 (a 10 s clip gives 39 windows; 9 clips pass the 200-vector minimum).
Prints per split the clip-level AUC (mean score per clip: held-out normal vs the 10 abnormal)
and, at the calibrated threshold, the share of clips whose decision (mean over
``DECISION_SECONDS``, default 5) ever goes over it; then the worst split.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_agent.errors import TrainingError
from edge_agent.models.builtin import SPECS
from edge_agent.models.calibration import decisions
from edge_agent.models.chain import features_of
from edge_agent.models.onnx_score import Scorer
from edge_agent.models.spec import names_contract
from edge_agent.models.training.baseline import fit_baseline
from edge_agent.recordings import read_recording

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_defaults import data_dir, roc_auc


def main() -> int:
    dec = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    spec = replace(SPECS["sound_mimii_fan"], hop=4000)
    names, contract = names_contract(spec)
    root = data_dir() / "mimii" / "fan_id_00"
    normal, abnormal = sorted((root / "normal").glob("*.wav")), sorted((root / "abnormal").glob(
        "*.wav"))
    F = {f: features_of(spec, read_recording(f, 0)[0]) for f in normal + abnormal}
    k = round(dec / (spec.hop / spec.sample_rate))
    rows = []
    for rot in range(4):
        test = normal[rot * 3:rot * 3 + 3]
        fit = [f for f in normal if f not in test]
        with tempfile.TemporaryDirectory() as td:
            try:
                b = fit_baseline(np.vstack([F[f] for f in fit]), names, contract,
                                 Path(td) / "b", name="fan", decision_seconds=dec)
            except TrainingError as exc:
                print(f"split {rot}: baseline refused: {exc}")
                continue
            sc = Scorer.load(b, expected_names=names, expected_contract=contract)
            s = {f: sc.score(F[f]) for f in test + abnormal}
        auc = roc_auc([s[f].mean() for f in test], [s[f].mean() for f in abnormal])
        n_rate = float(np.mean([decisions(s[f], k).max() > sc.threshold for f in test]))
        a_rate = float(np.mean([decisions(s[f], k).max() > sc.threshold for f in abnormal]))
        rows.append((auc, n_rate, a_rate))
        print(f"split {rot}: clip AUC {auc:.3f}, normal clips alarming {n_rate:.0%}, "
              f"abnormal clips alarming {a_rate:.0%}, threshold {sc.threshold:.4f}")
    if rows:
        print(f"worst: AUC {min(r[0] for r in rows):.3f}, normal alarming "
              f"{max(r[1] for r in rows):.0%}, abnormal alarming {min(r[2] for r in rows):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
