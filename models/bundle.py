"""Model bundles: ``model.onnx`` + ``manifest.json`` in a directory or a single-file archive.

A bundle is self-describing: the manifest says which features, in which order and computed how,
the model expects, what its score means, where the threshold is, what the training data looked
like (for drift checks) and which reference inputs must reproduce which scores. Loading checks the
ONNX file's sha256 against the manifest and, when a public key is given, an Ed25519 signature
(``manifest.sig``, over the exact manifest bytes; the manifest carries the model's hash, so the
signature covers both). See ``models/README.md`` for the format.

This module does no ONNX work and imports neither onnxruntime nor sklearn.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from edge_agent.errors import ContractMismatch, ModelError
from edge_agent.models.archive import is_archive_name, read_archive, write_archive

__all__ = ["Bundle", "ContractMismatch", "Manifest", "ModelError", "load_bundle", "pack",
           "save_bundle"]

FORMAT = "edge-agent-model-bundle/1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MAX_REFERENCE_TOLERANCE = 1e-2

Kind = Literal["vibration", "sound", "process"]
KINDS: tuple[str, ...] = ("vibration", "sound", "process")


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    unit: str = ""


@dataclass(frozen=True, slots=True)
class FeatureSummary:
    """Training distribution of one feature; quantiles at ``Manifest.quantile_levels``."""

    mean: float
    std: float
    quantiles: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Reference:
    """An input vector (float32-exact values) and the score the model must give it."""

    input: tuple[float, ...]
    score: float


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: str
    kind: str
    features: tuple[FeatureSpec, ...]
    extractor: Mapping[str, Any]
    score: Mapping[str, Any]
    """``semantics`` ("higher_is_more_anomalous"), ``estimator``, ``sklearn_output`` (e.g.
    "-score_samples"), ``graph`` ("fast_tree_ensemble" | "skl2onnx")."""
    thresholds: Mapping[str, float]
    """At least ``anomaly``; optionally ``warning``. Same units as the score."""
    training: Mapping[str, FeatureSummary]
    quantile_levels: tuple[float, ...]
    references: tuple[Reference, ...]
    onnx_sha256: str
    created: str
    source: Mapping[str, Any] = field(default_factory=dict)
    n_training_rows: int = 0
    reference_tolerance: float = 1e-4
    input_name: str = "X"
    output_name: str = "score"
    format: str = FORMAT

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def threshold(self) -> float:
        return float(self.thresholds["anomaly"])

    def to_json(self) -> str:
        d = asdict(self)
        d["extractor"] = dict(self.extractor)
        d["training"] = {k: asdict(v) for k, v in self.training.items()}
        return json.dumps(d, indent=1, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelError(f"manifest.json is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ModelError("manifest.json must hold a JSON object")
        return _manifest_from_dict(d)

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.format != FORMAT:
            out.append(f"format is {self.format!r}, this agent reads {FORMAT!r}")
        if self.kind not in KINDS:
            out.append(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        names = self.names
        if not names:
            out.append("no features")
        if len(set(names)) != len(names):
            out.append("duplicate feature names")
        if "anomaly" not in self.thresholds or not math.isfinite(self.threshold):
            out.append("thresholds.anomaly missing or not finite")
        if self.score.get("semantics") != "higher_is_more_anomalous":
            out.append("score.semantics must be 'higher_is_more_anomalous'")
        if set(self.training) != set(names):
            out.append("training summary does not cover exactly the features")
        bad_thr = [k for k, v in self.thresholds.items() if not math.isfinite(v)]
        if bad_thr:
            out.append(f"thresholds {', '.join(bad_thr)} not finite")
        lv = self.quantile_levels
        if (not lv or not all(0.0 <= q <= 1.0 for q in lv)
                or any(b <= a for a, b in pairwise(lv))):
            out.append("quantile_levels must be strictly increasing within [0, 1]")
        for k, s in self.training.items():
            if len(s.quantiles) != len(self.quantile_levels):
                out.append(f"training summary of {k} has {len(s.quantiles)} quantiles, "
                           f"expected {len(self.quantile_levels)}")
            if not (math.isfinite(s.mean) and math.isfinite(s.std) and s.std >= 0):
                out.append(f"training.{k}: mean/std not finite (or std < 0)")
            if not all(math.isfinite(q) for q in s.quantiles):
                out.append(f"training.{k}.quantiles not finite")
            elif any(b < a for a, b in pairwise(s.quantiles)):
                out.append(f"training.{k}.quantiles not sorted")
        for i, r in enumerate(self.references):
            if len(r.input) != len(names):
                out.append(f"reference {i} has {len(r.input)} values for {len(names)} features")
            if not (math.isfinite(r.score) and all(math.isfinite(x) for x in r.input)):
                out.append(f"reference {i} holds non-finite values")
        if not (0.0 < self.reference_tolerance <= MAX_REFERENCE_TOLERANCE):
            out.append(f"reference_tolerance {self.reference_tolerance!r} must be > 0 and <= "
                       f"{MAX_REFERENCE_TOLERANCE:g} (a larger one disables the reference check)")
        if self.n_training_rows < 0:
            out.append("n_training_rows is negative")
        if len(self.onnx_sha256) != 64:
            out.append("onnx_sha256 is not a sha256 hex digest")
        return out


def _manifest_from_dict(d: Mapping[str, Any]) -> Manifest:
    try:
        m = Manifest(
            name=str(d["name"]), version=str(d["version"]), kind=str(d["kind"]),
            features=tuple(FeatureSpec(str(f["name"]), str(f.get("unit", "")))
                           for f in d["features"]),
            extractor=dict(d["extractor"]),
            score=dict(d["score"]),
            thresholds={str(k): float(v) for k, v in d["thresholds"].items()},
            training={str(k): FeatureSummary(float(v["mean"]), float(v["std"]),
                                             tuple(float(q) for q in v["quantiles"]))
                      for k, v in d["training"].items()},
            quantile_levels=tuple(float(q) for q in d["quantile_levels"]),
            references=tuple(Reference(tuple(float(x) for x in r["input"]), float(r["score"]))
                             for r in d["references"]),
            onnx_sha256=str(d["onnx_sha256"]), created=str(d["created"]),
            source=dict(d.get("source", {})), n_training_rows=int(d.get("n_training_rows", 0)),
            reference_tolerance=float(d.get("reference_tolerance", 1e-4)),
            input_name=str(d.get("input_name", "X")),
            output_name=str(d.get("output_name", "score")),
            format=str(d.get("format", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"manifest.json is malformed ({type(exc).__name__}: {exc})") from exc
    bad = m.problems()
    if bad:
        raise ModelError("manifest.json is invalid: " + "; ".join(bad))
    return m


@dataclass(frozen=True, slots=True)
class Bundle:
    manifest: Manifest
    onnx_bytes: bytes
    path: Path
    manifest_bytes: bytes = b""
    signature: bytes | None = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise(obj: Any) -> Any:
    """JSON-normal form (tuples -> lists, mappings -> dicts, numpy scalars -> Python)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, Mapping):
        return dict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, set | frozenset):
        return sorted(o)
    raise TypeError(f"cannot put {type(o).__name__} in a manifest")


# -- reading ----------------------------------------------------------------------------------

def load_bundle(path: Path | str, *, public_key: bytes | None = None) -> Bundle:
    """Read and check a bundle directory or archive.

    Checks: both files present, manifest well-formed, sha256 of ``model.onnx`` matches, and if
    ``public_key`` (raw 32-byte Ed25519) is given, ``manifest.sig`` verifies.
    Raises :class:`ModelError` naming the problem.
    """
    p = Path(path)
    if p.is_dir():
        files: dict[str, bytes] = {}
        for n in (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE):
            f = p / n
            if f.is_file():
                files[n] = f.read_bytes()
    elif p.is_file():
        files = read_archive(p, (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE))
    else:
        raise ModelError(f"model bundle {p} does not exist")
    for need in (MANIFEST_FILE, MODEL_FILE):
        if need not in files:
            raise ModelError(f"model bundle {p} has no {need}")
    manifest = Manifest.from_json(files[MANIFEST_FILE])
    digest = sha256_hex(files[MODEL_FILE])
    if digest != manifest.onnx_sha256:
        raise ModelError(f"model bundle {p}: sha256 of {MODEL_FILE} is {digest[:16]}…, manifest "
                         f"says {manifest.onnx_sha256[:16]}… (corrupt or tampered)")
    sig = files.get(SIGNATURE_FILE)
    if public_key is not None:
        verify_signature(files[MANIFEST_FILE], sig, public_key, where=str(p))
    return Bundle(manifest, files[MODEL_FILE], p, files[MANIFEST_FILE], sig)


def verify_signature(manifest_bytes: bytes, sig: bytes | None, public_key: bytes,
                     *, where: str = "bundle") -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if sig is None:
        raise ModelError(f"{where}: a signature is required but {SIGNATURE_FILE} is missing")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, manifest_bytes)
    except (InvalidSignature, ValueError) as exc:
        raise ModelError(f"{where}: manifest signature does not verify") from exc


def sign_manifest(manifest_bytes: bytes, private_key: bytes) -> bytes:
    """Ed25519 signature of the manifest bytes with a raw 32-byte private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(private_key).sign(manifest_bytes)


# -- writing ----------------------------------------------------------------------------------

def save_bundle(out: Path | str, manifest: Manifest, onnx_bytes: bytes, *,
                private_key: bytes | None = None, overwrite: bool = True) -> Path:
    """Write a bundle directory (or an archive if ``out`` ends in .tar.gz/.tgz/.zip) atomically.

    The new bundle is complete on disk before it replaces an existing one.
    """
    out = Path(out)
    if manifest.onnx_sha256 != sha256_hex(onnx_bytes):
        raise ModelError("manifest.onnx_sha256 does not match the model bytes")
    bad = manifest.problems()
    if bad:
        raise ModelError("refusing to write an invalid manifest: " + "; ".join(bad))
    if out.exists() and not overwrite:
        raise ModelError(f"{out} exists (use overwrite)")
    mbytes = manifest.to_json().encode()
    files = {MANIFEST_FILE: mbytes, MODEL_FILE: onnx_bytes}
    if private_key is not None:
        files[SIGNATURE_FILE] = sign_manifest(mbytes, private_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_archive_name(out):
        write_archive(out, files)
        return out
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for n, data in files.items():
            (tmp / n).write_bytes(data)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def pack(bundle_dir: Path | str, archive: Path | str) -> Path:
    """Turn a bundle directory into a single-file archive (format from the suffix)."""
    b = load_bundle(bundle_dir)
    files = {MANIFEST_FILE: b.manifest_bytes, MODEL_FILE: b.onnx_bytes}
    if b.signature is not None:
        files[SIGNATURE_FILE] = b.signature
    archive = Path(archive)
    if not is_archive_name(archive):
        raise ModelError(f"{archive}: archive name must end in .tar.gz, .tgz, .tar or .zip")
    write_archive(archive, files)
    return archive


def feature_specs(names: Sequence[str], units: Mapping[str, str] | None = None
                  ) -> tuple[FeatureSpec, ...]:
    units = units or {}
    return tuple(FeatureSpec(n, units.get(n, guess_unit(n))) for n in names)


_UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("kurtosis", "1"), ("skewness", "1"), ("crest_factor", "1"), ("crest", "1"),
    ("shape_factor", "1"), ("impulse_factor", "1"), ("_hz", "Hz"), ("freq", "Hz"),
    ("centroid", "Hz"), ("bandwidth", "Hz"), ("rolloff", "Hz"), ("mfcc", "1"),
    ("rms", "g"), ("peak", "g"), ("band", "g"), ("energy", "g^2"), ("_db", "dB"),
)


def guess_unit(name: str) -> str:
    """Best-effort unit from a feature name (used when the extractor gives none)."""
    low = name.lower()
    for key, unit in _UNIT_SUFFIXES:
        if key in low:
            return unit
    return ""
