"""``[pipelines.registry]``: where a pipeline takes its model versions from."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from pydantic import Field

from edge_agent.settings import ByteSize, Duration, Model, SecretField

__all__ = ["RegistryConfig", "load_public_key"]


class RegistryConfig(Model):
    """One pipeline's MLflow registry source. Until a version is deployed, the pipeline runs its
    configured ``model`` (or none)."""

    tracking_uri: Annotated[str, Field(pattern=r"https?://[^\s/]+(/\S*)?")]
    model_name: Annotated[str, Field(min_length=1)]
    alias: Annotated[str, Field(min_length=1)] = "edge-production"
    poll_interval: Duration = 300.0
    username: str | None = None
    password: SecretField | None = None
    trusted_keys: Annotated[tuple[str, ...], Field(min_length=1)]
    """Ed25519 public keys: files holding a PEM ``PUBLIC KEY``, the raw 32 bytes or 64 hex
    digits. A bundle must be signed by one of them."""
    keep_versions: Annotated[int, Field(ge=1, le=100)] = 3
    max_bundle_size: ByteSize = 64 * 1024 * 1024
    timeout: Duration = 30.0
    """Per HTTP request (connect, read) to the registry."""
    probation_windows: Annotated[int, Field(ge=1)] = 30
    """Scored windows a new version must get through before it counts as good."""
    outlier_factor: Annotated[float, Field(gt=0)] = 10.0
    """A score is far outside the reference distribution when it lies more than this many
    reference spans beyond the range of the manifest's reference scores and threshold."""
    tag_deployed: bool = True
    """Report the deployment as tag ``edge.<gateway_id>.deployed`` on the model version."""

    def problems(self) -> Iterable[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.poll_interval < 0.05:
            out.append(("poll_interval", "must be at least 50ms"))
        if self.password is not None and self.username is None:
            out.append(("username", "is required with password"))
        if self.max_bundle_size <= 0:
            out.append(("max_bundle_size", "must be > 0"))
        return out

    def world_problems(self) -> Iterable[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for i, k in enumerate(self.trusted_keys):
            try:
                load_public_key(k)
            except (OSError, ValueError) as exc:
                out.append((f"trusted_keys[{i}]", str(exc)))
        return out

    def public_keys(self) -> list[bytes]:
        """The trusted keys as raw 32-byte Ed25519 public keys (raises OSError / ValueError)."""
        return [load_public_key(k) for k in self.trusted_keys]


def load_public_key(spec: str) -> bytes:
    """Raw Ed25519 public key from a file (PEM, raw 32 bytes or 64 hex digits) or 64 hex."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = spec.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    try:
        data = Path(spec).expanduser().read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read key {spec}: {exc.strerror or exc}") from exc
    if len(data) == 32:
        return data
    stripped = data.strip()
    if len(stripped) == 64:
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except ValueError as exc:
            raise ValueError(f"{spec}: not a PEM public key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{spec}: not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise ValueError(f"{spec}: not an Ed25519 public key (PEM, 32 raw bytes or 64 hex digits)")
