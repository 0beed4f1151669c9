"""``edge-agent models export | train | score | verify | pack`` (``score``:
:mod:`edge_agent.models.score_cmd`).

The agent's CLI calls :func:`add_commands` with its subparsers; every command sets
``func(args) -> int`` (0 ok, 1 refused/failed, 2 usage). export and train import
:mod:`edge_agent.models.training` (the ``[train]`` extra: sklearn, skl2onnx, onnx) inside the
command; without the extra they exit 1 with a line saying what to install.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ModelError, StorageError
from edge_agent.models.bundle import load_bundle, pack
from edge_agent.models.calibration import DEFAULT_MIN_SD
from edge_agent.models.spec import Spec
from edge_agent.records import parse_ts

F64 = npt.NDArray[np.float64]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="model bundles: export, train, score, verify, "
                                             "pack, sign, publish, rollback")
    sub = p.add_subparsers(dest="models_command", required=True)

    ex = sub.add_parser("export", help="sklearn pipeline (joblib/pickle/MLflow dir) -> bundle")
    ex.add_argument("model", help="joblib/pickle file or MLflow sklearn model directory")
    ex.add_argument("--features", required=True,
                    help="training feature sample: .csv with a header of feature names, or "
                         ".npz with X and names")
    ex.add_argument("--holdout", help="held-out rows for the ONNX/sklearn check (same format)")
    _contract_args(ex)
    _bundle_args(ex)
    ex.add_argument("--threshold", type=float, help="anomaly threshold (default: quantile)")
    ex.add_argument("--tol", type=float, default=1e-5, help="max |onnx - sklearn| (1e-5)")
    ex.set_defaults(func=cmd_export)

    tr = sub.add_parser("train", help="fit a baseline (scaler + IsolationForest, or a band "
                                      "alarm) -> bundle")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="source_id whose feature vectors to read from the buffer")
    src.add_argument("--from-files", nargs="+", metavar="FILE",
                     help="replay recordings (.wav/.flac/.mat/IMS ASCII) or feature files "
                          "(.csv/.npz)")
    tr.add_argument("--db", help="buffer database (with --source)")
    tr.add_argument("--since", help="RFC 3339 start (with --source)")
    tr.add_argument("--until", help="RFC 3339 end (with --source)")
    tr.add_argument("--spec", help="extractor settings of a shipped bundle "
                                   "(edge_agent.models.builtin.SPECS), for recordings")
    tr.add_argument("--extractor", help="JSON file: {features: {...}, sample_rate, window, hop, "
                                        "channels}, for recordings")
    tr.add_argument("--channel", help="recording column / CWRU key suffix to use")
    _recording_args(tr)
    _contract_args(tr)
    _bundle_args(tr)
    tr.add_argument("--n-estimators", type=int, default=100)
    _estimator_args(tr)
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=cmd_train)

    ve = sub.add_parser("verify", help="check a bundle (sha256, reference scores, contract)")
    ve.add_argument("bundle")
    _contract_args(ve)
    ve.add_argument("--threads", type=int, default=1)
    ve.set_defaults(func=cmd_verify)

    pk = sub.add_parser("pack", help="bundle directory -> single-file .tar.gz/.zip")
    pk.add_argument("bundle")
    pk.add_argument("archive")
    pk.set_defaults(func=cmd_pack)

    from edge_agent.models.registry.publish import add_commands as add_registry_commands
    from edge_agent.models.score_cmd import add_command as add_score_command

    add_score_command(sub)

    add_registry_commands(sub)  # keygen, sign, publish, rollback


def _contract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contract", help="JSON file with the extractor contract "
                                      "(extractor.contract())")
    p.add_argument("--like", help="take feature names and contract from this bundle")


def _recording_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-rate", type=float, dest="sample_rate",
                   help="sample rate (Hz) of the recordings, where a file does not give it")
    p.add_argument("--rpm", type=float,
                   help="shaft speed (rpm) of the recordings, where a file does not give it")


def _estimator_args(tr: argparse.ArgumentParser) -> None:
    tr.add_argument("--estimator", choices=("isolation_forest", "band_alarm"),
                    help="model (default: the --like bundle's, else isolation_forest; "
                         "band_alarm for band levels)")
    tr.add_argument("--min-sd", type=float, default=None,
                    help="band alarm: floor of each feature's baseline deviation (default: "
                         "the --like bundle's, else 2, in dB for band levels)")


def _bundle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="bundle directory or .tar.gz/.zip to write")
    p.add_argument("--name", required=True)
    p.add_argument("--version")
    p.add_argument("--kind", choices=("vibration", "sound", "process"))
    p.add_argument("--quantile", type=float, default=None,
                   help="threshold = this quantile of the training scores (export: default "
                        "0.995; train: the old rule, instead of calibrating on held-out rows)")
    p.add_argument("--false-alarms-per-hour", type=float, default=0.1,
                   help="train: calibrate the threshold for this rate (default 0.1)")
    p.add_argument("--decision-seconds", type=float, default=0.0,
                   help="train: decide on the mean score over this span (default: windows)")


# -- inputs -----------------------------------------------------------------------------------

def read_feature_file(path: Path | str) -> tuple[F64, tuple[str, ...]]:
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            return np.asarray(z["X"], np.float64), tuple(str(n) for n in z["names"])
    with p.open(encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    X = np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    return X, tuple(h.strip() for h in header)


def _estimator(args: argparse.Namespace) -> dict[str, Any]:
    """``estimator`` and ``min_sd`` from the flags, else from the ``--like`` bundle."""
    score = dict(load_bundle(args.like).manifest.score) if args.like else {}
    like = "band_alarm" if score.get("estimator") == "BandAlarm" else "isolation_forest"
    min_sd = args.min_sd if args.min_sd is not None else score.get("min_sd", DEFAULT_MIN_SD)
    return {"estimator": args.estimator or like, "min_sd": float(min_sd)}


def _contract(args: argparse.Namespace) -> tuple[tuple[str, ...] | None, dict[str, Any] | None]:
    if args.like:
        m = load_bundle(args.like).manifest
        return m.names, dict(m.extractor)
    if args.contract:
        c = json.loads(Path(args.contract).read_text(encoding="utf-8"))
        if not isinstance(c, dict):
            raise ModelError(f"{args.contract}: contract must be a JSON object")
        names = c.get("features")
        return (tuple(names) if isinstance(names, list) else None), c
    return None, None


def read_buffer_features(db: Path | str, source: str, since: float, until: float
                         ) -> tuple[F64, tuple[str, ...]]:
    """Feature vectors of ``source`` with ``since <= ts <= until`` from the buffer (read-only,
    through :func:`edge_agent.sync.readback.feature_rows`); vectors whose feature names differ
    from the first one's are skipped."""
    from edge_agent.sync.readback import feature_rows

    rows = feature_rows(db, source, since, until)
    if not rows:
        raise ModelError(f"no feature vectors of {source!r} between the given times in {db}")
    names = tuple(rows[0])
    data = [[float(v) if v is not None else np.nan for v in vals.values()]
            for vals in rows if tuple(vals) == names]
    return np.array(data, dtype=np.float64).reshape(-1, len(names)), names


def _replay(files: Sequence[str], args: argparse.Namespace
            ) -> tuple[F64, tuple[str, ...], dict[str, Any]]:
    from edge_agent.models.chain import features_of, names_contract

    if all(Path(f).suffix in (".csv", ".npz") for f in files):
        parts = [read_feature_file(f) for f in files]
        names = parts[0][1]
        if any(n != names for _, n in parts):
            raise ModelError("feature files have different columns")
        _, contract = _contract(args)
        if contract is None:
            raise ModelError("feature files need --contract or --like for the extractor contract")
        return np.vstack([x for x, _ in parts]), names, contract
    spec = _spec(args)
    mats, speeds = [], []
    for f in files:
        x, rate, rpm = recording_for(spec, f, args)
        mats.append(features_of(spec, x, source=Path(f).name, shaft_rpm=rpm, sample_rate=rate))
        if rpm is not None:
            speeds.append(rpm)
    names, contract = names_contract(spec)
    include = contract.get("include")
    if speeds and isinstance(include, list) and "envelope" in include:
        contract["shaft_speed_range"] = [min(speeds), max(speeds)]
    return np.vstack(mats), names, contract


def recording_for(spec: Spec, f: str, args: argparse.Namespace
                  ) -> tuple[F64, float, float | None]:
    """One recording's samples for ``spec``: its rate (``--sample-rate`` where the file lacks
    one) and shaft speed (the file's, else ``--rpm``), checked against the spec."""
    from edge_agent.recordings import READ_ERRORS, read, select_channel

    try:
        x, rec = select_channel(read(f, sample_rate=args.sample_rate), args.channel)
    except READ_ERRORS as exc:
        raise ModelError(f"{f}: {exc}") from exc
    if rec.sample_rate < spec.sample_rate or x.shape[1] != len(spec.channels):
        raise ModelError(f"{f}: {x.shape[1]} channel(s) at {rec.sample_rate} Hz, the extractor "
                         f"expects {len(spec.channels)} at {spec.sample_rate} Hz or faster "
                         f"(resampled) (use --channel or --sample-rate)")
    rpm = args.rpm if args.rpm is not None else rec.rpm
    return x, rec.sample_rate, rpm


def _spec(args: argparse.Namespace) -> Spec:
    from edge_agent.models.builtin import SPECS
    from edge_agent.models.dsp.extract import SoundConfig, VibrationConfig
    from edge_agent.settings import parse

    if args.spec:
        if args.spec not in SPECS:
            raise ModelError(f"unknown spec {args.spec!r}; known: {', '.join(SPECS)}")
        return SPECS[args.spec]
    if args.like:
        from edge_agent.models.spec import spec_from_contract

        try:
            return spec_from_contract(load_bundle(args.like).manifest.extractor, "like",
                                      getattr(args, "rpm", None))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{args.like}: its contract does not give the extractor settings "
                             f"({exc})") from exc
    if not args.extractor:
        raise ModelError("recordings need --like BUNDLE, --spec or --extractor to know the "
                         "feature settings")
    raw = json.loads(Path(args.extractor).read_text(encoding="utf-8"))
    feats = raw.get("features", {})
    cfg: VibrationConfig | SoundConfig = (parse(SoundConfig, feats, "features")
                                          if feats.get("kind") == "sound"
                                          else parse(VibrationConfig, feats, "features"))
    return Spec("replay", cfg, int(raw["window"]), int(raw["hop"]),
                float(raw["sample_rate"]), tuple(raw["channels"]))


# -- commands ---------------------------------------------------------------------------------

def _fail(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from edge_agent.models.training.export import export_bundle, load_sklearn

        est, source = load_sklearn(args.model)
        X, file_names = read_feature_file(args.features)
        names, contract = _contract(args)
        if contract is None:
            return _fail("give --contract FILE or --like BUNDLE (the extractor contract)", 2)
        names = names or file_names
        if tuple(file_names) != tuple(names):
            return _fail(f"{args.features} columns {list(file_names)[:4]}… differ from the "
                         f"contract's features {list(names)[:4]}…")
        hold = read_feature_file(args.holdout)[0] if args.holdout else None
        path = export_bundle(est, X, names, contract, args.out, name=args.name,
                             version=args.version, kind=args.kind, threshold=args.threshold,
                             quantile=args.quantile or 0.995, X_holdout=hold, source=source,
                             tol=args.tol)
    except (ModelError, OSError, ValueError, KeyError) as exc:  # TrainExtraMissing is a ModelError
        return _fail(str(exc))
    return _summary(path)


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from edge_agent.models.training.baseline import fit_baseline

        if args.source:
            if not (args.db and args.since and args.until):
                return _fail("--source needs --db, --since and --until", 2)
            X, names = read_buffer_features(args.db, args.source, parse_ts(args.since),
                                            parse_ts(args.until))
            want, contract = _contract(args)
            if contract is None:
                return _fail("--source needs --contract or --like (the extractor contract)", 2)
            if want is not None and tuple(want) != names:
                return _fail(f"buffered features {list(names)[:4]}… differ from the contract's "
                             f"{list(want)[:4]}…")
            src: dict[str, Any] = {"kind": "buffer", "source_id": args.source,
                                   "since": args.since, "until": args.until}
        else:
            X, names, contract = _replay(args.from_files, args)
            src = {"kind": "replay", "files": [Path(f).name for f in args.from_files]}
        print(f"{len(X)} feature vectors x {len(names)} features")
        path = fit_baseline(X, names, contract, Path(args.out), name=args.name,
                            quantile=args.quantile, seed=args.seed,
                            false_alarms_per_hour=args.false_alarms_per_hour,
                            decision_seconds=args.decision_seconds,
                            n_estimators=args.n_estimators, version=args.version,
                            kind=args.kind, source=src, **_estimator(args))
    except (ModelError, StorageError, OSError, ValueError, KeyError) as exc:
        return _fail(str(exc))
    return _summary(path)


def cmd_verify(args: argparse.Namespace) -> int:
    from edge_agent.models.onnx_score import Scorer, contract_differences

    try:
        b = load_bundle(args.bundle)
        Scorer.from_bundle(b, threads=args.threads)
        names, contract = _contract(args)
        if contract is not None:
            diffs = contract_differences(b.manifest, names or b.manifest.names, contract)
            if diffs:
                return _fail("contract mismatch: " + "; ".join(diffs))
    except (ModelError, OSError, ValueError) as exc:
        return _fail(str(exc))
    return _summary(Path(args.bundle))


def cmd_pack(args: argparse.Namespace) -> int:
    try:
        out = pack(args.bundle, args.archive)
    except (ModelError, OSError) as exc:
        return _fail(str(exc))
    print(out)
    return 0


def _summary(path: Path) -> int:
    m = load_bundle(path).manifest
    info: Mapping[str, Any] = {
        "path": str(path), "name": m.name, "version": m.version, "kind": m.kind,
        "features": len(m.names), "threshold": m.threshold, "graph": m.score.get("graph"),
        "verified_max_abs_diff": m.score.get("verified_max_abs_diff"),
        "references": len(m.references), "onnx_sha256": m.onnx_sha256,
    }
    print(json.dumps(info, indent=1))
    return 0
