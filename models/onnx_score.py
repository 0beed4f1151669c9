"""Scoring with onnxruntime: contract-checked loading, edge-tuned session, batch scoring.

Only numpy and onnxruntime are imported here: sklearn never sits on the scoring path.

``Scorer.load`` refuses a bundle (``ModelError`` / ``ContractMismatch`` with a message naming
the mismatch) when its feature names/order or extractor settings differ from the running
pipeline's, when the ONNX file is corrupt or has the wrong input/output shape, or when its
reference vectors do not reproduce their recorded scores. :class:`ModelSlot` keeps the previous
model when a new one is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from pydantic import Field

from edge_agent.errors import ContractMismatch, FeatureError, ModelError
from edge_agent.models.bundle import Bundle, Manifest, load_bundle, normalise
from edge_agent.records import FeatureVector, ModelRef
from edge_agent.settings import Model

log = logging.getLogger(__name__)

__all__ = ["ContractMismatch", "ModelError", "ModelSlot", "Scorer", "ScorerConfig",
           "contract_differences", "score_vectors"]

_F32_MAX = float(np.finfo(np.float32).max)


class ScorerConfig(Model):
    """Settings for one pipeline's model (``[pipelines.<id>.model]``)."""

    path: str
    threads: int = Field(1, ge=1, le=64)
    public_key_hex: str | None = None
    """If set, the bundle must carry a valid Ed25519 ``manifest.sig`` for this key (64 hex)."""

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.public_key_hex is not None:
            try:
                if len(bytes.fromhex(self.public_key_hex)) != 32:
                    out.append(("public_key_hex", "must be 32 bytes (64 hex digits)"))
            except ValueError:
                out.append(("public_key_hex", "must be hex"))
        return out

    def world_problems(self) -> list[tuple[str, str]]:
        """The bundle must exist: a shipped ``builtin:<name>`` or a path on this machine."""
        if self.path.startswith("builtin:"):
            name = self.path.removeprefix("builtin:")
            shipped = resources.files("edge_agent.models") / "bundles"
            have = sorted(p.name for p in shipped.iterdir() if p.is_dir())
            if name not in have:
                return [("path", f"no built-in model {name!r} (built-in: {', '.join(have)})")]
            return []
        if not Path(self.path).expanduser().exists():
            return [("path", f"{self.path} does not exist")]
        return []


def contract_differences(manifest: Manifest, expected_names: Sequence[str],
                         expected_contract: Mapping[str, object]) -> list[str]:
    """Human-readable differences between a bundle's contract and the pipeline's (empty = ok)."""
    out: list[str] = []
    have, want = list(manifest.names), list(expected_names)
    if have != want:
        missing = [n for n in want if n not in have]
        extra = [n for n in have if n not in want]
        if missing:
            out.append(f"model lacks features the extractor produces: {', '.join(missing[:8])}")
        if extra:
            out.append(f"model expects features the extractor does not produce: "
                       f"{', '.join(extra[:8])}")
        if not missing and not extra:
            i = next(i for i, (a, b) in enumerate(zip(have, want, strict=True)) if a != b)
            out.append(f"feature order differs at position {i}: model has {have[i]!r}, "
                       f"extractor produces {want[i]!r}")
    mine = {k: v for k, v in normalise(manifest.extractor).items() if k not in SPEED_KEYS}
    theirs = {k: v for k, v in normalise(dict(expected_contract)).items()
              if k not in SPEED_KEYS}
    for c in (mine, theirs):
        if c.get("kind") == "vibration":
            # contracts written before the unit was part of every vibration contract were
            # computed in the default unit (they named it only with the ISO features)
            c.setdefault("accel_unit", "g")
    out += _speed_differences(speed_range(manifest.extractor), speed_range(expected_contract))
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key, "<absent>"), theirs.get(key, "<absent>")
        if not _same(a, b):
            out.append(f"extractor setting {key!r}: model was trained with {a!r}, "
                       f"pipeline uses {b!r}")
    return out


# The shaft speed's source (a fixed value, a tag) is not part of the contract; its range is.
SPEED_KEYS = ("shaft_speed_rpm", "shaft_speed_tag", "shaft_speed_range")
SPEED_TOLERANCE = 0.02   # relative: as the envelope features' tolerance per harmonic


def speed_range(contract: Mapping[str, object]) -> tuple[float, float] | None:
    """The shaft speed range (rpm) a contract states: ``shaft_speed_range``, or a fixed
    ``shaft_speed_rpm`` (bundles written before ranges); None when it states none."""
    r = contract.get("shaft_speed_range")
    if isinstance(r, list | tuple) and len(r) == 2:
        return float(r[0]), float(r[1])
    rpm = contract.get("shaft_speed_rpm")
    if isinstance(rpm, int | float) and not isinstance(rpm, bool) and rpm > 0:
        return float(rpm), float(rpm)
    return None


def speed_in_range(rpm: float, rng: tuple[float, float]) -> bool:
    return rng[0] * (1 - SPEED_TOLERANCE) <= rpm <= rng[1] * (1 + SPEED_TOLERANCE)


def _speed_differences(mine: tuple[float, float] | None,
                       theirs: tuple[float, float] | None) -> list[str]:
    if mine is None or theirs is None or (speed_in_range(theirs[0], mine)
                                          and speed_in_range(theirs[1], mine)):
        return []    # a speed from a tag is checked while scoring (Chain flags it)
    return [f"shaft speed: model was trained at {mine[0]:g}-{mine[1]:g} rpm, pipeline runs at "
            f"{theirs[0]:g}-{theirs[1]:g} rpm"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Edge tuning: few threads, no spinning, sequential execution, full graph optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class Scorer:
    """A loaded, verified model. ``score`` maps an ``(n, f)`` matrix to ``(n,)`` float64."""

    def __init__(self, bundle: Bundle, session: ort.InferenceSession) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.ref = ModelRef(bundle.manifest.name, bundle.manifest.version)
        self.threshold = bundle.manifest.threshold
        self.names: tuple[str, ...] = bundle.manifest.names
        self._session = session
        self._input = bundle.manifest.input_name
        self._outputs = [bundle.manifest.output_name]

    @classmethod
    def load(cls, path: Path | str, *, expected_names: Sequence[str],
             expected_contract: Mapping[str, object], threads: int = 1,
             public_key: bytes | None = None) -> Scorer:
        bundle = load_bundle(path, public_key=public_key)
        diffs = contract_differences(bundle.manifest, expected_names, expected_contract)
        if diffs:
            raise ContractMismatch(f"model {bundle.manifest.name} v{bundle.manifest.version} "
                                   f"({path}) refused: " + "; ".join(diffs))
        return cls.from_bundle(bundle, threads=threads)

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, threads: int = 1) -> Scorer:
        """Open the session and check shapes and reference vectors (no contract check)."""
        m = bundle.manifest
        try:
            sess = ort.InferenceSession(bundle.onnx_bytes, sess_options=session_options(threads),
                                        providers=["CPUExecutionProvider"])
        except (ort_state.Fail,
                ort_state.InvalidGraph,
                ort_state.InvalidProtobuf,
                ort_state.NotImplemented,
                RuntimeError) as exc:
            raise ModelError(f"model {m.name} ({bundle.path}): onnxruntime cannot load "
                             f"model.onnx: {exc}") from exc
        inputs = {i.name: i for i in sess.get_inputs()}
        outputs = {o.name for o in sess.get_outputs()}
        if m.input_name not in inputs or len(inputs) != 1:
            raise ModelError(f"model {m.name}: expected one input {m.input_name!r}, graph has "
                             f"{sorted(inputs)}")
        if m.output_name not in outputs:
            raise ModelError(f"model {m.name}: graph has no output {m.output_name!r}")
        inp = inputs[m.input_name]
        if inp.type != "tensor(float)":
            raise ModelError(f"model {m.name}: input type {inp.type}, expected tensor(float)")
        shape = list(inp.shape)
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(m.names)):
            raise ModelError(f"model {m.name}: input shape {shape} does not take "
                             f"{len(m.names)} features")
        scorer = cls(bundle, sess)
        scorer._check_references()
        return scorer

    def _check_references(self) -> None:
        m = self.manifest
        if not m.references:
            raise ModelError(f"model {m.name}: manifest has no reference vectors")
        X = np.array([r.input for r in m.references], dtype=np.float64)
        want = np.array([r.score for r in m.references], dtype=np.float64)
        got = self.score(X)
        diff = np.abs(got - want)
        bad = ~(diff <= m.reference_tolerance)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ModelError(f"model {m.name} v{m.version}: reference vector {i} scores "
                             f"{got[i]:.6g}, manifest expects {want[i]:.6g} (|diff| "
                             f"{diff[i]:.3g} > {m.reference_tolerance:g}); model and manifest "
                             f"disagree")

    def score(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Scores (higher = more anomalous); NaN for rows with any non-finite value.

        Raises :class:`~edge_agent.errors.FeatureError` (a ``ModelError`` and a ``ValueError``)
        if ``X`` is not ``(n, len(names))``; ``ModelError`` if the runtime fails on finite
        input.
        """
        A = np.asarray(X, dtype=np.float64)
        if A.ndim == 1:
            A = A.reshape(1, -1)
        if A.ndim != 2 or A.shape[1] != len(self.names):
            raise FeatureError(f"model {self.ref.name} takes (n, {len(self.names)}) features, "
                             f"got shape {A.shape}")
        n = A.shape[0]
        if n == 0:
            return np.full(0, np.nan)
        # One reduction covers NaN (max is NaN), +-Inf and values float32 cannot hold.
        if np.abs(A).max() <= _F32_MAX:
            return self._run(A.astype(np.float32))
        out = np.full(n, np.nan, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ok = (np.abs(A) <= _F32_MAX).all(axis=1)
        if ok.any():
            out[ok] = self._run(A[ok].astype(np.float32))
        return out

    def _run(self, x32: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        try:
            res = self._session.run(self._outputs, {self._input: x32})[0]
        except (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException) as exc:
            raise ModelError(f"model {self.ref.name}: scoring failed: {exc}") from exc
        out: npt.NDArray[np.float64] = np.asarray(res, dtype=np.float64).reshape(-1)
        if out.shape[0] != x32.shape[0]:
            raise ModelError(f"model {self.ref.name}: {out.shape[0]} scores for "
                             f"{x32.shape[0]} rows")
        return out

    def matrix(self, rows: Sequence[Mapping[str, float]]) -> npt.NDArray[np.float64]:
        """Feature dicts to an ``(n, f)`` matrix in model order; missing names become NaN."""
        X = np.full((len(rows), len(self.names)), np.nan, dtype=np.float64)
        for i, r in enumerate(rows):
            for j, n in enumerate(self.names):
                v = r.get(n)
                if v is not None:
                    X[i, j] = v
        return X


def score_vectors(scorer: Scorer, fvs: Sequence[FeatureVector]) -> list[bool]:
    """Score a queue of feature vectors in one batch, filling ``model``, ``score``, ``is_anomaly``.

    Rows with non-finite (or missing) features are not fed to the model: they keep
    ``score=None`` and ``is_anomaly=None`` (the window is marked unscored); the returned list
    says which rows were scored.
    """
    if not fvs:
        return []
    s = scorer.score(scorer.matrix([fv.values for fv in fvs]))
    scored: list[bool] = []
    for fv, v in zip(fvs, s, strict=True):
        fv.model = scorer.ref
        if math.isfinite(float(v)):
            fv.score = float(v)
            fv.is_anomaly = bool(v > scorer.threshold)
            scored.append(True)
        else:
            fv.score = None
            fv.is_anomaly = None
            scored.append(False)
    return scored


class ModelSlot:
    """The current model of one pipeline; a refused replacement leaves the previous one in place."""

    def __init__(self, expected_names: Sequence[str], expected_contract: Mapping[str, object],
                 *, threads: int = 1, public_key: bytes | None = None) -> None:
        self.expected_names = tuple(expected_names)
        self.expected_contract = dict(expected_contract)
        self.threads = threads
        self.public_key = public_key
        self.current: Scorer | None = None
        self.last_error: str | None = None

    def load(self, path: Path | str) -> Scorer:
        """Load and swap in; on failure raise ``ModelError`` and keep ``current`` unchanged."""
        try:
            sc = Scorer.load(path, expected_names=self.expected_names,
                             expected_contract=self.expected_contract, threads=self.threads,
                             public_key=self.public_key)
        except ModelError as exc:
            self.last_error = str(exc)
            kept = (f"{self.current.ref.name} v{self.current.ref.version}" if self.current
                    else "none")
            log.warning("model refused; keeping the previous one",
                        extra={"error": str(exc), "kept": kept})
            raise
        self.current = sc
        self.last_error = None
        return sc
