"""``edge-agent models score BUNDLE FILE… [--sample-rate HZ] [--rpm RPM] [--json]``.

Scores recordings with a bundle through the daemon's own chain (:class:`~edge_agent.models.
chain.Chain`: the bundle's contract gives the extractor settings and the analysis rate; a
faster recording is resampled, one at another rate or unit is refused as in the daemon). One
result per file: ``file, windows, anomalous, score_median, alarm, diagnosis``. ``diagnosis`` is
``{fault, confidence, evidence}`` from :func:`edge_agent.models.diagnosis.diagnose` when that
module is installed (else ``null``); it needs the shaft speed (the file's, or ``--rpm``) and the
bearing geometry (the contract's, or ``--bearing``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.bearing import BearingGeometry
from edge_agent.errors import ModelError
from edge_agent.models.bundle import load_bundle
from edge_agent.models.onnx_score import ScorerConfig
from edge_agent.models.spec import Spec, spec_from_contract
from edge_agent.recordings import READ_ERRORS, Recording, read
from edge_agent.records import WaveformBlock

F64 = npt.NDArray[np.float64]
DIAGNOSIS = "edge_agent.models.diagnosis"
FILE_ERRORS: tuple[type[Exception], ...] = (ModelError, *READ_ERRORS)


def add_command(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser("score", help="score recordings with a bundle (the daemon's chain)")
    sc.add_argument("bundle")
    sc.add_argument("files", nargs="+", metavar="FILE")
    sc.add_argument("--sample-rate", type=float, dest="sample_rate",
                    help="sample rate (Hz) of the recordings, where a file does not give it")
    sc.add_argument("--rpm", type=float, help="shaft speed (rpm), where a file does not give it")
    sc.add_argument("--channel", help="recording column / CWRU signal (default: the one named "
                                      "like the bundle's channel, else DE / the first)")
    sc.add_argument("--bearing", help="bearing geometry for the diagnosis: "
                                      "N_BALLS,BALL_D,PITCH_D[,CONTACT_DEG]")
    sc.add_argument("--json", action="store_true", help="one JSON object per line")
    sc.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    # the chain logs every alarm and refusal: here they are in the results
    logging.getLogger(__name__.rpartition(".")[0]).setLevel(logging.ERROR)  # edge_agent.models
    try:
        bundle = load_bundle(args.bundle)
        spec = spec_from_contract(bundle.manifest.extractor, bundle.manifest.name, args.rpm)
        spec = dataclasses.replace(spec, source=bundle.manifest.name,
                                   model=ScorerConfig(path=str(bundle.path)))
        bearing = _bearing(args.bearing, bundle.manifest.extractor)
    except (ModelError, OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {args.bundle}: {exc}", file=sys.stderr)
        return 1
    failed = 0
    for f in args.files:
        try:
            res = score_file(spec, Path(f), args, bearing)
        except FILE_ERRORS as exc:
            failed += 1
            res = {"file": f, "error": str(exc)}
        _print(res, args.json)
    return 1 if failed else 0


def _bearing(arg: str | None, contract: Any) -> BearingGeometry | None:
    vals = [float(v) for v in arg.split(",")] if arg else contract.get("bearing")
    if not vals:
        return None
    return BearingGeometry(n_balls=int(vals[0]), ball_diameter=vals[1], pitch_diameter=vals[2],
                           contact_angle_deg=vals[3] if len(vals) > 3 else 0.0)


def _columns(rec: Recording, spec: Spec, channel: str | None) -> F64:
    want = len(spec.channels)
    if channel is not None:
        cols = [_col(rec, c) for c in channel.split(",")]
    elif all(c in rec.names for c in spec.channels):
        cols = [rec.names.index(c) for c in spec.channels]
    elif rec.keys is not None and "DE" in rec.keys and want == 1:
        cols = [rec.keys.index("DE")]
    else:
        cols = list(range(want))
    if len(cols) != want or max(cols) >= rec.samples.shape[1]:
        raise ModelError(f"{rec.path.name}: the bundle analyses {want} channel(s) "
                         f"{list(spec.channels)}; the file has {list(rec.names)} (use --channel)")
    return np.ascontiguousarray(rec.samples[:, cols])


def _col(rec: Recording, c: str) -> int:
    if rec.keys is not None and c.upper().removesuffix("_TIME") in rec.keys:
        return rec.keys.index(c.upper().removesuffix("_TIME"))
    if c in rec.names:
        return rec.names.index(c)
    return int(c)


def score_file(spec: Spec, path: Path, args: argparse.Namespace,
               bearing: BearingGeometry | None) -> dict[str, Any]:
    from edge_agent.models.chain import Chain

    rec = read(path, sample_rate=args.sample_rate)
    x = _columns(rec, spec, args.channel)
    rpm = args.rpm if args.rpm is not None else rec.rpm
    chain = Chain(spec, Path("."))
    block = WaveformBlock(spec.source, rec.sample_rate, spec.channels, 0.0, x, bundle_unit(spec))
    vectors, events = chain.process(block, rpm)
    if chain.cannot_score is not None:
        raise ModelError(f"{path.name}: cannot score: {chain.cannot_score}")
    scores = np.array([v.score for v in vectors if v.score is not None], dtype=np.float64)
    return {"file": str(path), "windows": len(vectors),
            "anomalous": int(sum(bool(v.is_anomaly) for v in vectors)),
            "score_median": float(np.median(scores)) if scores.size else None,
            "alarm": any(e.kind == "anomaly_raised" for e in events),
            "diagnosis": diagnosis(x[:, 0], rec.sample_rate, rpm, bearing)}


def bundle_unit(spec: Spec) -> str:
    """The unit the recording's samples are taken to be in: the contract's ``accel_unit``
    (vibration; CWRU files are in g), else none."""
    return str(getattr(spec.features, "accel_unit", "")) if spec.features.kind == "vibration" \
        else ""


def diagnosis(x: F64, rate: float, rpm: float | None,
              bearing: BearingGeometry | None) -> dict[str, Any] | None:
    """``diagnose(...)`` of :mod:`edge_agent.models.diagnosis` when that module exists, else
    None; ``undetermined`` when the speed or the bearing geometry is unknown."""
    if importlib.util.find_spec(DIAGNOSIS) is None:
        return None
    if rpm is None or bearing is None:
        return {"fault": "undetermined", "confidence": 0.0,
                "evidence": {"reason": "no shaft speed (--rpm)" if rpm is None
                             else "no bearing geometry (--bearing)"}}
    diagnose = importlib.import_module(DIAGNOSIS).diagnose
    out = diagnose(x, rate, rpm / 60.0, bearing)
    return {"fault": out.get("fault"), "confidence": out.get("confidence"),
            "evidence": out.get("evidence")}


def _print(res: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(res, default=str), flush=True)
        return
    if "error" in res:
        print(f"{res['file']}: error: {res['error']}")
        return
    d = res["diagnosis"]
    med = "-" if res["score_median"] is None else f"{res['score_median']:.4g}"
    print(f"{res['file']}: {res['windows']} windows, {res['anomalous']} anomalous, median "
          f"score {med}, alarm {'yes' if res['alarm'] else 'no'}"
          + ("" if d is None else f", diagnosis {d.get('fault')} ({d.get('confidence')})"))
