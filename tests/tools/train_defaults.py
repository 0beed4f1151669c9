"""Train and export the shipped default bundles; print ROC-AUC on held-out real data.

A developer tool, not part of the installed package (it needs the ``[train]`` extra and the
shared recordings). From the repository root::

    .venv/bin/python tests/tools/train_defaults.py [--data DIR] [--out DIR] [--only NAME ...]

Bundles (written to ``models/bundles/<name>/``, normal data only in training):

* ``vibration_cwru_de``: CWRU drive-end accelerometer, 48 kHz, healthy file ``normal_0_97``:
  a calibrated baseline of the whole file (fit on the first 60 %, threshold calibrated and
  checked on the rest). AUC: CWRU inner-race, outer-race and ball fault files vs the last 40 %
  of the healthy windows (not fitted).
* ``sound_mimii_fan``: MIMII fan id_00, microphone channel 0, 16 kHz, octave band levels of 1 s
  windows every 0.25 s, band alarm (``fit_baseline(estimator="band_alarm")``, cross-fitted,
  0.1 false alarms per hour on 5 s decisions); 8 normal clips train, 4 are held out. AUC: the
  10 abnormal clips vs the held-out normal clips, per window and per clip (mean score), and the
  share of clips alarming at the threshold. The rotation of held-out clips (an on-site baseline
  from normal clips only) is ``tests/tools/onsite_mimii.py`` and, asserted,
  ``tests/models/test_onsite_sound.py``.
* ``vibration_simulator`` / ``sound_simulator``: the built-in simulated pump's healthy running
  (fault script ``none``, a seed different from the default run), through the same extractors the
  simulator's default pipelines use. AUC: the scripted outer-race fault at severity >= 0.5 vs
  held-out healthy windows.

Each pipeline's settings are in :data:`edge_agent.models.builtin.SPECS`; the ``[[pipelines]]``
entry that fits a bundle is printed after training (the contract check refuses the model under
any other settings). Recordings are read by :func:`edge_agent.recordings.read_recording` and
turned into feature matrices by :func:`edge_agent.models.chain.features_of` (the daemon's own
chain), as ``edge-agent models train --from-files`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_agent.models.builtin import BUNDLES, SPECS
from edge_agent.models.chain import features_of
from edge_agent.models.dsp.extract import VibrationConfig
from edge_agent.models.spec import Spec, names_contract
from edge_agent.recordings import read_recording
from edge_agent.records import WaveformBlock

__all__ = ["BUNDLES", "SPECS", "features_of", "main", "names_contract", "read_recording",
           "roc_auc", "simulator_features"]

F64 = npt.NDArray[np.float64]
REPO = Path(__file__).resolve().parents[2]


# -- recordings -------------------------------------------------------------------------------

def data_dir(arg: str | None = None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("EDGE_AGENT_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def roc_auc(normal: Sequence[float] | F64, anomalous: Sequence[float] | F64) -> float:
    """P(score of an anomalous item > score of a normal one), ties counting half."""
    a = np.asarray(normal, dtype=np.float64)
    b = np.asarray(anomalous, dtype=np.float64)
    allv = np.concatenate([a, b])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    _, inv, counts = np.unique(sorted_v, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    avg = cum - (counts - 1) / 2.0
    ranks[order] = avg[inv]
    rb = ranks[len(a):].sum()
    return float((rb - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


# -- the bundles ------------------------------------------------------------------------------

def _fit(spec: Spec, X: F64, out: Path, kind: str, source: Mapping[str, object],
         quantile: float | None = None, decision_seconds: float = 0.0) -> Path:
    """Threshold calibrated on held-out rows (0.1 false alarms/hour), or ``quantile`` of the fit
    scores where the data is below the calibrated baseline's minimum."""
    from edge_agent.models.training.baseline import fit_baseline

    names, contract = names_contract(spec)
    return fit_baseline(X, names, contract, out / spec.name, name=spec.name, version="1",
                        kind=kind, seed=0, source=source, quantile=quantile,
                        holdout_fraction=0.2, decision_seconds=decision_seconds)


def _score(bundle: Path, spec: Spec, X: F64) -> F64:
    from edge_agent.models.onnx_score import Scorer

    names, contract = names_contract(spec)
    return Scorer.load(bundle, expected_names=names, expected_contract=contract).score(X)


def train_cwru(data: Path, out: Path) -> dict[str, float]:
    spec = SPECS["vibration_cwru_de"]
    x, _ = read_recording(data / "cwru" / "normal_0_97.mat", sample_rate=48000.0)  # README
    # The whole 5 s healthy file (237 windows, above the 200 minimum): the baseline fits on its
    # first 60 % and calibrates/checks on the rest, which the AUC below is measured against.
    every = features_of(spec, x)
    held = every[round(len(every) * 0.6):]
    b = _fit(spec, every, out, "vibration", {"data": "CWRU normal_0_97.mat DE, whole file"})
    s_norm = _score(b, spec, held)
    res: dict[str, float] = {}
    faults = []
    for f in ("48k_Drive_End_IR007_0_109.mat", "48k_Drive_End_OR007@6_0_135.mat",
              "48k_Drive_End_B007_0_122.mat"):
        xf, _ = read_recording(data / "cwru" / f)
        s = _score(b, spec, features_of(spec, xf))
        faults.append(s)
        res[f.split("_")[3]] = roc_auc(s_norm, s)
    res["all_faults"] = roc_auc(s_norm, np.concatenate(faults))
    return res


def train_mimii(data: Path, out: Path) -> dict[str, float]:
    """Band alarm on octave band levels (1 s windows every 0.25 s) of the first 8 normal clips,
    cross-fitted and calibrated for 0.1 false alarms per hour on 5 s decisions; the other 4
    normal clips and the abnormal ones measure it (clip = mean score; alarm = any 5 s decision
    over the threshold)."""
    from edge_agent.models.training.baseline import fit_baseline

    spec = SPECS["sound_mimii_fan"]
    root = data / "mimii" / "fan_id_00"
    normal = sorted((root / "normal").glob("*.wav"))
    abnormal = sorted((root / "abnormal").glob("*.wav"))
    if len(normal) < 6 or not abnormal:
        raise FileNotFoundError(f"{root}: need >= 6 normal and some abnormal clips")
    n_train = len(normal) * 2 // 3
    clip = [features_of(spec, read_recording(p, 0)[0]) for p in normal + abnormal]
    names, contract = names_contract(spec)
    b = fit_baseline(np.vstack(clip[:n_train]), names, contract, out / spec.name,
                     name=spec.name, version="2", kind="sound", seed=0,
                     estimator="band_alarm", min_sd=2.0, decision_seconds=5.0,
                     source={"data": "MIMII fan id_00 ch0, normal clips "
                             f"{[p.name for p in normal[:n_train]]}"})
    scores = [_score(b, spec, c) for c in clip]
    held, ab = scores[n_train:len(normal)], scores[len(normal):]
    thr, k = _threshold(b), round(5.0 * spec.sample_rate / spec.hop)
    return {"shipped_windows": roc_auc(np.concatenate(held), np.concatenate(ab)),
            "shipped_clips_mean_score": roc_auc([s.mean() for s in held],
                                                [s.mean() for s in ab]),
            "held_out_normal_clips_alarming": _alarming(held, k, thr),
            "abnormal_clips_alarming": _alarming(ab, k, thr)}


def _alarming(scores: Sequence[F64], k: int, thr: float) -> float:
    from edge_agent.models.calibration import decisions

    return float(np.mean([decisions(s, k).max() > thr for s in scores]))


def simulator_features(seconds: float, *,
                       fault: Literal["none", "outer_race", "inner_race"], seed: int
                       ) -> tuple[F64, F64, F64, F64]:
    """Vibration and microphone feature matrices (+ fault severity per window) of a simulated run
    with the default simulator settings except ``fault.kind`` and ``seed``."""
    from edge_agent.drivers.simulator import Config, FaultScript, SimulatedPlant

    cfg = Config(kind="simulator", seed=seed, pace="fast",
                 fault=FaultScript(kind=fault))
    plant = SimulatedPlant(cfg, start=0.0)
    vib: list[F64] = []
    mic: list[F64] = []
    while plant.t < seconds:
        for rec in plant.next_block():
            if isinstance(rec, WaveformBlock):
                (vib if rec.source_id.endswith("de_accel") else mic).append(rec.samples)
    sv, sm = SPECS["vibration_simulator"], SPECS["sound_simulator"]
    Xv = features_of(sv, np.vstack(vib))
    Xm = features_of(sm, np.vstack(mic))
    tv = (np.arange(len(Xv)) * sv.hop + sv.window) / sv.sample_rate  # window end times
    tm = (np.arange(len(Xm)) * sm.hop + sm.window) / sm.sample_rate
    return Xv, Xm, np.array([plant.severity(t) for t in tv]), np.array([plant.severity(t)
                                                                       for t in tm])


def train_simulator(out: Path) -> dict[str, float]:
    Xv, Xm, _, _ = simulator_features(150.0, fault="none", seed=1001)
    cut_v, cut_m = int(len(Xv) * 0.8), int(len(Xm) * 0.8)
    src = {"data": "edge_agent.drivers.simulator healthy run (fault none, seed 1001, 150 s)"}
    bv = _fit(SPECS["vibration_simulator"], Xv[:cut_v], out, "vibration", src)
    bm = _fit(SPECS["sound_simulator"], Xm[:cut_m], out, "sound", src, decision_seconds=2.0)
    Fv, Fm, sev_v, sev_m = simulator_features(130.0, fault="outer_race", seed=42)
    res = {}
    for key, b, spec, held, F, sev in (
            ("vibration", bv, SPECS["vibration_simulator"], Xv[cut_v:], Fv, sev_v),
            ("sound", bm, SPECS["sound_simulator"], Xm[cut_m:], Fm, sev_m)):
        s_h = _score(b, spec, held)
        s_f = _score(b, spec, F)
        res[f"{key}_severity>=0.5"] = roc_auc(s_h, s_f[sev >= 0.5])
        res[f"{key}_severity<0.2"] = roc_auc(s_h, s_f[(sev > 0) & (sev < 0.2)])
        res[f"{key}_healthy_phase_alarm_rate"] = float(np.mean(
            s_f[sev == 0] > _threshold(b)))
    return res


def _threshold(bundle: Path) -> float:
    from edge_agent.models.bundle import load_bundle

    return load_bundle(bundle).manifest.threshold


def pipeline_toml(spec: Spec, source: str) -> str:
    f = spec.features
    extra = ""
    if isinstance(f, VibrationConfig):
        extra = f'include = {list(f.include)!r}\nhigh_freq_cut = {f.high_freq_cut}\n'
    else:
        extra = f"n_mfcc = {f.n_mfcc}\nn_fft = {f.n_fft}\nhop = {f.hop}\n"
    return (f'[[pipelines]]\nsource = "{source}"\nwindow = {spec.window}\nhop = {spec.hop}\n'
            f'model = {{ path = "builtin:{spec.name}" }}\n[pipelines.features]\nkind = "{f.kind}"\n'
            + extra.replace("'", '"'))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tests/tools/train_defaults.py",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="recordings folder (default $EDGE_AGENT_TEST_DATA or "
                                   "../shared/data)")
    ap.add_argument("--out", default=str(BUNDLES), help="bundles folder (default: shipped)")
    ap.add_argument("--only", nargs="*", choices=("cwru", "mimii", "simulator"),
                    default=("cwru", "mimii", "simulator"))
    args = ap.parse_args(argv)
    data, out = data_dir(args.data), Path(args.out)
    if {"cwru", "mimii"} & set(args.only) and not (data / "README.md").is_file():
        print(f"recordings not found at {data}; pass --data or set EDGE_AGENT_TEST_DATA",
              file=sys.stderr)
        return 2
    results: dict[str, dict[str, float]] = {}
    if "cwru" in args.only:
        results["vibration_cwru_de (CWRU faults vs held-out healthy windows)"] = \
            train_cwru(data, out)
    if "mimii" in args.only:
        results["sound_mimii_fan (MIMII abnormal vs held-out normal clips)"] = \
            train_mimii(data, out)
    if "simulator" in args.only:
        results["simulator bundles (outer-race fault run vs held-out healthy)"] = \
            train_simulator(out)
    for title, res in results.items():
        print(f"ROC-AUC {title}:")
        for k, v in res.items():
            print(f"  {k:36s} {v:.4f}")
    print("\nPipeline settings these bundles expect:\n")
    if "simulator" in args.only:
        print(pipeline_toml(SPECS["vibration_simulator"], "pump-01.de_accel"))
        print(pipeline_toml(SPECS["sound_simulator"], "pump-01.mic"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
