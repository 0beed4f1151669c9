"""``edge-agent models keygen | sign | publish | rollback``: the central team's side of the
registry, and the operator's manual rollback.

* ``keygen --out PREFIX`` writes an Ed25519 pair ``PREFIX.key`` (PEM, mode 0600) and
  ``PREFIX.pub`` (PEM; what gateways list in ``trusted_keys``);
* ``sign BUNDLE --key PRIVATE_KEY`` writes ``manifest.sig`` (Ed25519 over the exact manifest
  bytes, which carry the sha256 of ``model.onnx``);
* ``publish BUNDLE --tracking-uri URI --name NAME [--alias ALIAS]`` creates a run, uploads the
  bundle's files as run artifacts through the server's artifact proxy, registers a version from
  them and moves the alias. Credentials: ``--username`` / ``$MLFLOW_TRACKING_USERNAME`` and
  ``$MLFLOW_TRACKING_PASSWORD`` (HTTP basic);
* ``rollback SOURCE`` takes the pipeline's current registry version out of service (it is never
  deployed again) in favour of the one before; a running agent applies it within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, ConfigProblem
from edge_agent.models.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    ModelError,
    is_archive_name,
    load_bundle,
    sign_manifest,
)
from edge_agent.models.registry.deploy import Store
from edge_agent.records import format_ts, now

__all__ = ["add_commands", "load_private_key", "publish_bundle", "sign_bundle"]


def add_commands(sub: Any) -> None:
    """Register the registry subcommands on ``edge-agent models``' subparsers."""
    kg = sub.add_parser("keygen", help="create an Ed25519 signing key pair (PREFIX.key/.pub)")
    kg.add_argument("--out", required=True, help="path prefix of the two files")
    kg.add_argument("--force", action="store_true")
    kg.set_defaults(func=cmd_keygen)

    sg = sub.add_parser("sign", help="sign a bundle's manifest (writes manifest.sig)")
    sg.add_argument("bundle", help="bundle directory")
    sg.add_argument("--key", required=True, help="Ed25519 private key (PEM or raw 32 bytes)")
    sg.set_defaults(func=cmd_sign)

    pb = sub.add_parser("publish", help="upload a bundle to an MLflow registry as a new version")
    pb.add_argument("bundle", help="bundle directory or archive")
    pb.add_argument("--tracking-uri", required=True)
    pb.add_argument("--name", required=True, help="registered model name")
    pb.add_argument("--alias", help="point this alias at the new version")
    pb.add_argument("--experiment-id", default="0")
    pb.add_argument("--username", default=os.environ.get("MLFLOW_TRACKING_USERNAME"))
    pb.add_argument("--allow-unsigned", action="store_true",
                    help="publish a bundle without manifest.sig (gateways will refuse it)")
    pb.set_defaults(func=cmd_publish)

    rb = sub.add_parser("rollback", help="take a pipeline's registry version out of service")
    rb.add_argument("source", help="the pipeline's waveform source")
    where = rb.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help="agent config (to find the state directory)")
    where.add_argument("--state-dir", help="the agent's state directory")
    rb.add_argument("--reason", default="rolled back by command")
    rb.set_defaults(func=cmd_rollback)


def _fail(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


# -- keys and signatures ----------------------------------------------------------------------
def load_private_key(path: Path | str) -> bytes:
    """Raw 32-byte Ed25519 private key from a PEM (PKCS#8) file, raw bytes or 64 hex."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = Path(path).read_bytes()
    if len(data) == 32:
        return data
    if data.strip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    try:
        raw = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not an Ed25519 private key (PEM, raw or hex)") from exc
    if len(raw) != 32:
        raise ValueError(f"{path}: an Ed25519 private key has 32 bytes")
    return raw


def sign_bundle(bundle_dir: Path, private_key: bytes) -> bytes:
    """Write ``manifest.sig`` into a bundle directory (atomically); returns the signature."""
    b = load_bundle(bundle_dir)  # structure and sha256 first: never sign a broken bundle
    sig = sign_manifest(b.manifest_bytes, private_key)
    tmp = bundle_dir / f".{SIGNATURE_FILE}.tmp"
    tmp.write_bytes(sig)
    os.replace(tmp, bundle_dir / SIGNATURE_FILE)
    return sig


def cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path, pub_path = Path(f"{args.out}.key"), Path(f"{args.out}.pub")
    for p in (key_path, pub_path):
        if p.exists() and not args.force:
            return _fail(f"{p} exists (use --force)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    print(f"wrote {key_path} (keep it secret) and {pub_path} (list it in trusted_keys)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle)
    if not bundle.is_dir():
        return _fail(f"{bundle}: sign a bundle directory (pack it afterwards)", 2)
    try:
        sig = sign_bundle(bundle, load_private_key(args.key))
    except (ModelError, OSError, ValueError) as exc:
        return _fail(str(exc))
    print(f"signed {bundle / MANIFEST_FILE} ({len(sig)}-byte Ed25519 signature)")
    return 0


# -- publishing -------------------------------------------------------------------------------
async def publish_bundle(bundle: Path | str, tracking_uri: str, name: str, *,
                         alias: str | None = None, experiment_id: str = "0",
                         username: str | None = None, password: str | None = None,
                         allow_unsigned: bool = False) -> dict[str, Any]:
    """Run → artifacts (through the proxy) → registered version → alias. Returns a summary."""
    b = load_bundle(bundle)
    if b.signature is None and not allow_unsigned:
        raise ModelError(f"{bundle} is not signed (edge-agent models sign); gateways refuse "
                         "unsigned bundles")
    files = {MANIFEST_FILE: b.manifest_bytes, MODEL_FILE: b.onnx_bytes}
    if b.signature is not None:
        files[SIGNATURE_FILE] = b.signature
    m = b.manifest
    from edge_agent.models.registry.client import RegistryClient, artifact_path  # httpx

    async with RegistryClient(tracking_uri, username=username, password=password) as c:
        run_id, art_uri = await c.create_run(experiment_id, f"bundle {m.name} v{m.version}")
        base = artifact_path(art_uri)
        for fname, data in files.items():
            await c.upload(f"{base}/bundle/{fname}", data)
        await c.finish_run(run_id)
        await c.ensure_registered_model(name)
        mv = await c.create_version(name, f"{art_uri}/bundle", run_id, {
            "bundle.name": m.name, "bundle.version": m.version,
            "bundle.onnx_sha256": m.onnx_sha256, "bundle.signed": str(b.signature is not None)})
        if alias:
            await c.set_alias(name, alias, mv.version)
    return {"name": name, "version": mv.version, "run_id": run_id,
            "source": f"{art_uri}/bundle", "alias": alias, "bundle": f"{m.name} v{m.version}"}


def cmd_publish(args: argparse.Namespace) -> int:
    from edge_agent.models.registry.client import RegistryFailure  # httpx: not for the parser

    if is_archive_name(Path(args.bundle)) and not Path(args.bundle).is_file():
        return _fail(f"{args.bundle} does not exist", 2)
    try:
        out = asyncio.run(publish_bundle(
            args.bundle, args.tracking_uri, args.name, alias=args.alias,
            experiment_id=args.experiment_id, username=args.username,
            password=os.environ.get("MLFLOW_TRACKING_PASSWORD"),
            allow_unsigned=args.allow_unsigned))
    except (ModelError, RegistryFailure, OSError) as exc:
        return _fail(str(exc))
    print(json.dumps(out, indent=1))
    return 0


# -- manual rollback --------------------------------------------------------------------------
def _state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else ``[agent].state_dir`` of the config file (read as plain TOML: the
    models layer does not import the agent's config; the agent validated the file when it ran)."""
    if args.state_dir:
        return Path(args.state_dir)
    import tomllib

    try:
        raw = tomllib.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(args.config), f"cannot read: {exc}")]) from None
    agent = raw.get("agent", {})
    state = agent.get("state_dir", "./state") if isinstance(agent, dict) else "./state"
    return Path(str(state)).expanduser()


def cmd_rollback(args: argparse.Namespace) -> int:
    try:
        store = Store(_state_dir(args), args.source)
    except ConfigError as exc:
        return _fail(str(exc), 78)
    if not store.root.is_dir():
        return _fail(f"no registry deployments for {args.source!r} under {store.root}")
    with store.update() as st:
        if st.current is None:
            return _fail(f"{args.source}: no registry version in service, nothing to roll back")
        old, new = st.rollback(args.reason)
        st.rollback_request = {"from": old, "to": new, "reason": args.reason,
                               "at": format_ts(now())}
    target = f"version {new}" if new is not None else "the configured model"
    print(f"{args.source}: version {old} taken out of service, {target} goes back in "
          "(a running agent applies it within a second, otherwise at its next start)")
    return 0
