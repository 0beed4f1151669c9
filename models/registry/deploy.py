"""One pipeline's deployed model versions on disk, and the checks a version must pass.

Layout under ``<state_dir>/registry/<source>/``::

    staging/        downloads in progress; emptied at every start (a crash leaves nothing loaded)
    versions/<v>/   installed bundles (model.onnx, manifest.json, manifest.sig), the last
                    ``keep_versions`` deployed ones
    state.json      which version runs, the deployed history, refused and failed versions, a
                    pending rollback request (written atomically under ``state.lock``)

A version is installed only after every check passed (:func:`verify_staged`): the Ed25519
signature over the exact manifest bytes by one of the trusted keys, the manifest, the sha256 of
``model.onnx``, the feature contract against the running extractor, and — in onnxruntime — the
graph's shape and the manifest's reference vectors. Installing is a rename of the fsynced staging
folder, so ``versions/<v>`` is either complete or absent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.models.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    Bundle,
    Manifest,
    ModelError,
    sha256_hex,
)
from edge_agent.models.onnx_score import Scorer, contract_differences

log = logging.getLogger(__name__)

__all__ = ["BUNDLE_FILES", "DeployState", "Refusal", "Store", "signed_by", "verify_staged"]

BUNDLE_FILES = (MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE)


class Refusal(ModelError):
    """A version failed a check; ``step`` names it (size, files, signature, manifest, sha256,
    contract, onnx, references)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


@dataclass
class DeployState:
    current: str | None = None
    """Registry version in service (None: the pipeline's configured model)."""
    history: list[str] = field(default_factory=list)
    """Deployed versions, oldest first; the last is ``current``."""
    refused: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """Versions rolled back (automatically or by command): never deployed again."""
    probation: str | None = None
    """``current`` while it has not yet proved itself in service."""
    rollback_request: dict[str, Any] | None = None
    """Written by ``models rollback``; applied (and cleared) by the running agent."""

    @classmethod
    def from_json(cls, text: str) -> DeployState:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("state.json must hold an object")
        return cls(current=d.get("current"), history=[str(v) for v in d.get("history", [])],
                   refused={str(k): str(v) for k, v in d.get("refused", {}).items()},
                   failed={str(k): str(v) for k, v in d.get("failed", {}).items()},
                   probation=d.get("probation"), rollback_request=d.get("rollback_request"))

    def known(self, version: str) -> bool:
        """Already deployed, refused or failed: nothing to do when the alias points here."""
        return version == self.current or version in self.refused or version in self.failed

    def rollback(self, reason: str) -> tuple[str | None, str | None]:
        """Take ``current`` out of service: mark it failed and fall back to the deployed version
        before it (or the configured model). Returns ``(from, to)``."""
        old = self.current
        if old is not None:
            self.failed[old] = reason
            self.history = [v for v in self.history if v != old]
        self.current = self.history[-1] if self.history else None
        self.probation = None
        return old, self.current


def safe_name(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source) or "_"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """The on-disk side of one pipeline's registry deployments."""

    def __init__(self, state_dir: Path, source: str) -> None:
        self.root = Path(state_dir) / "registry" / safe_name(source)
        self.staging = self.root / "staging"
        self.versions = self.root / "versions"
        self._state = self.root / "state.json"
        self._lock = self.root / "state.lock"

    def prepare(self) -> list[str]:
        """Create the folders and empty ``staging`` (left-overs of a crash). Returns what was
        removed."""
        self.versions.mkdir(parents=True, exist_ok=True)
        removed = sorted(p.name for p in self.staging.iterdir()) if self.staging.is_dir() else []
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        return removed

    def version_dir(self, version: str) -> Path:
        return self.versions / safe_name(version)

    def new_staging(self, version: str) -> Path:
        p = self.staging / f"{safe_name(version)}.{uuid.uuid4().hex[:8]}"
        p.mkdir(parents=True)
        return p

    def read(self) -> DeployState:
        try:
            return DeployState.from_json(self._state.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return DeployState()
        except (ValueError, AttributeError, TypeError) as exc:
            log.error("registry state unreadable; starting from the configured model",
                      extra={"path": str(self._state), "error": str(exc)})
            return DeployState()

    def stamp(self) -> float:
        """Modification time of state.json (0 when absent): cheap change detection."""
        try:
            return self._state.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    @contextlib.contextmanager
    def update(self) -> Iterator[DeployState]:
        """Read-modify-write of state.json under an exclusive lock (the agent and the
        ``models rollback`` command share it); written atomically when the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read()
            yield state
            tmp = self._state.with_name(f".state.{os.getpid()}.tmp")
            with tmp.open("w", encoding="utf-8") as fh:
                json.dump(asdict(state), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._state)
            _fsync_dir(self.root)

    def install(self, staged: Path, version: str) -> Path:
        """Move a verified staging folder into ``versions/<v>`` (fsync files, rename, fsync)."""
        for f in staged.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(staged)
        final = self.version_dir(version)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        _fsync_dir(self.versions)
        return final

    def prune(self, state: DeployState, keep: int) -> list[str]:
        """Delete installed versions beyond the last ``keep`` deployed ones."""
        state.history = state.history[-keep:]
        wanted = {safe_name(v) for v in state.history}
        if state.current is not None:
            wanted.add(safe_name(state.current))
        gone = []
        for d in self.versions.iterdir():
            if d.name not in wanted:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
        return sorted(gone)


# -- checks ------------------------------------------------------------------------------------
def signed_by(manifest_bytes: bytes, signature: bytes | None,
              keys: Sequence[bytes]) -> int | None:
    """Index of the trusted key whose Ed25519 signature over the manifest verifies, or None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if signature is None:
        return None
    for i, k in enumerate(keys):
        try:
            Ed25519PublicKey.from_public_bytes(k).verify(signature, manifest_bytes)
            return i
        except (InvalidSignature, ValueError):
            continue
    return None


def verify_staged(staged: Path, keys: Sequence[bytes], expected_names: Sequence[str],
                  expected_contract: Mapping[str, object], *, threads: int = 1) -> Scorer:
    """Every check of a downloaded bundle; raises :class:`Refusal` naming the failing step.

    CPU-bound (onnxruntime): run it in a worker thread."""
    files = {n: (staged / n).read_bytes() for n in BUNDLE_FILES if (staged / n).is_file()}
    for need in (MANIFEST_FILE, MODEL_FILE):
        if need not in files:
            raise Refusal("files", f"bundle has no {need}")
    mbytes = files[MANIFEST_FILE]
    if SIGNATURE_FILE not in files:
        raise Refusal("signature", f"bundle is not signed (no {SIGNATURE_FILE})")
    if signed_by(mbytes, files[SIGNATURE_FILE], keys) is None:
        raise Refusal("signature", "manifest signature does not verify with any trusted key")
    try:
        manifest = Manifest.from_json(mbytes)
    except ModelError as exc:
        raise Refusal("manifest", str(exc)) from exc
    digest = sha256_hex(files[MODEL_FILE])
    if digest != manifest.onnx_sha256:
        raise Refusal("sha256", f"sha256 of {MODEL_FILE} is {digest[:16]}…, the manifest says "
                      f"{manifest.onnx_sha256[:16]}… (corrupt or tampered)")
    diffs = contract_differences(manifest, expected_names, expected_contract)
    if diffs:
        raise Refusal("contract", "feature contract differs: " + "; ".join(diffs))
    bundle = Bundle(manifest, files[MODEL_FILE], staged, mbytes, files[SIGNATURE_FILE])
    try:
        return Scorer.from_bundle(bundle, threads=threads)
    except ModelError as exc:
        step = "references" if "reference vector" in str(exc) else "onnx"
        raise Refusal(step, str(exc)) from exc


def load_installed(path: Path, keys: Sequence[bytes], expected_names: Sequence[str],
                   expected_contract: Mapping[str, object], *, threads: int = 1) -> Scorer:
    """Load an installed version (the same checks again: the disk may have changed)."""
    return verify_staged(path, keys, expected_names, expected_contract, threads=threads)
