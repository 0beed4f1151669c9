"""Operator subcommands as a field technician runs them: certificates, quarantine, bundles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509

from edge_agent.sync.buffer import Buffer, BufferConfig

CLI = [sys.executable, "-m", "edge_agent.agent.cli"]
REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_opcua_gen_cert_writes_a_usable_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    cert, key = tmp_path / "pki" / "client.der", tmp_path / "pki" / "client.pem"
    uri = "urn:plant1:edge-gw"
    r = cli("opcua", "gen-cert", "--cert", str(cert), "--key", str(key),
            "--application-uri", uri, "--hostname", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    c = x509.load_der_x509_certificate(cert.read_bytes())
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uri in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert key.stat().st_mode & 0o077 == 0  # the private key is not readable by others
    again = cli("opcua", "gen-cert", "--cert", str(cert), "--key", str(key))
    assert again.returncode == 1 and "exists" in again.stderr


async def test_quarantine_list_on_a_buffer_and_clear_error_without_one(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    buf = Buffer(db, BufferConfig())
    await buf.start()
    await buf.close()
    r = cli("quarantine", "list", "--db", str(db))
    assert r.returncode == 0 and "no quarantined batches" in r.stdout, r.stderr
    r = cli("quarantine", "list", "--db", str(tmp_path / "nope.db"))
    assert r.returncode == 1 and "no buffer database" in r.stderr
    r = cli("quarantine", "requeue", "--db", str(db))
    assert r.returncode == 2 and "needs a batch id" in r.stderr


def test_models_verify_shipped_bundle_and_refuse_a_tampered_one(tmp_path: Path) -> None:
    bundle = REPO / "models" / "bundles" / "vibration_simulator"
    r = cli("models", "verify", str(bundle))
    assert r.returncode == 0, r.stderr
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(bundle, bad)
    onnx = bad / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    r = cli("models", "verify", str(bad))
    assert r.returncode != 0 and "sha256" in (r.stdout + r.stderr)
