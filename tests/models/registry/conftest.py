"""A real MLflow tracking server (started once per session), a fault-injecting loopback proxy in
front of it, a signing key pair and builders for good and bad bundles."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]
BASE_BUNDLE = REPO / "models" / "bundles" / "vibration_simulator"
START_TIMEOUT = 120.0


@dataclass
class MlflowServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def _mlflow_bin() -> str:
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.exists():
        pytest.fail(f"the mlflow server is not installed ({exe} missing): "
                    "pip install -e '.[test]' installs it")
    return str(exe)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free loopback port, sqlite backend, proxied artifacts."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = root / "server.log"
    cmd = [_mlflow_bin(), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
           "--workers", "1"]
    # No background job runner: the tests need the registry and the artifact proxy only.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=root, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server did not answer within {START_TIMEOUT:.0f} s:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)
    yield MlflowServer(url, port, proc, log)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(1)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# -- fault-injecting proxy --------------------------------------------------------------------
CANNED = {
    "500": b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\nconnection: close"
           b"\r\n\r\nbusy!",
    "401": b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 2"
           b"\r\nconnection: close\r\n\r\n{}",
    "garbage": b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 14\r\n"
               b"connection: close\r\n\r\n<html>oops</ht",
}


class Proxy:
    """TCP proxy on loopback: ``forward`` (default), a canned answer (``500``, ``401``,
    ``garbage``) or :meth:`stop` (connection refused, like a stopped server) and :meth:`start`
    again on the same port. Records the request heads it forwarded."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.mode = "forward"
        self.heads: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def set_mode(self, mode: str) -> None:
        """Switch behaviour; open (keep-alive) connections are cut so it applies at once."""
        self.mode = mode
        for w in list(self._conns):
            w.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            await self._server.wait_closed()
            self._server = None

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        with contextlib.suppress(ConnectionError, OSError):
            w.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self._conns.add(cw)
        try:
            head = await cr.read(65536)
            self.heads.append(head.split(b"\r\n\r\n", 1)[0])
            if self.mode != "forward":
                cw.write(CANNED[self.mode])
                await cw.drain()
                cw.close()
                return
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
            uw.write(head)
            await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw))
        except (ConnectionError, OSError):
            cw.close()
        finally:
            self._conns.discard(cw)


@pytest.fixture
async def proxy(mlflow_server: MlflowServer) -> AsyncIterator[Proxy]:
    p = Proxy(mlflow_server.port)
    await p.start()
    yield p
    await p.stop()


# -- keys and bundles ---------------------------------------------------------------------------
@dataclass
class Keys:
    private: bytes
    public_pem: Path
    private_pem: Path
    other_private: bytes  # a key no gateway trusts


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    d = tmp_path_factory.mktemp("keys")
    k, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                          serialization.NoEncryption())
    (d / "central.key").write_bytes(k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (d / "central.pub").write_bytes(k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    other_raw = other.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    return Keys(raw, d / "central.pub", d / "central.key", other_raw)


def far_out_of_service_onnx(onnx_bytes: bytes, n_refs: int) -> bytes:
    """The model, except that any batch whose size differs from the reference batch scores
    1e6 higher: it passes every check in staging and fails in service."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load_from_string(onnx_bytes)
    g = m.graph
    for node in g.node:
        node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
    g.initializer.extend([
        helper.make_tensor("zero_i", TensorProto.INT64, [], [0]),
        helper.make_tensor("nref_i", TensorProto.INT64, [], [n_refs]),
        helper.make_tensor("big_f", TensorProto.FLOAT, [], [1e6]),
    ])
    g.node.extend([
        helper.make_node("Shape", ["X"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "zero_i"], ["x_rows"], axis=0),
        helper.make_node("Equal", ["x_rows", "nref_i"], ["is_ref_batch"]),
        helper.make_node("Add", ["score_raw", "big_f"], ["score_far"]),
        helper.make_node("Where", ["is_ref_batch", "score_raw", "score_far"], ["score"]),
    ])
    return m.SerializeToString()


BundleMaker = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keys) -> BundleMaker:
    """``make_bundle(version, *, edit=None, onnx=None, key=None)``: a copy of the shipped
    simulator bundle with manifest ``version``, optionally edited (``edit(manifest_dict)``) or
    with other model bytes (sha256 updated), signed with ``key`` (default: the trusted one)."""
    def make(version: str, *, edit: Callable[[dict[str, Any]], None] | None = None,
             onnx: Callable[[bytes, dict[str, Any]], bytes] | None = None,
             key: bytes | None = None) -> Path:
        from edge_agent.models.bundle import sign_manifest

        out = tmp_path / f"bundle-v{version}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        m = json.loads((BASE_BUNDLE / "manifest.json").read_text())
        model = (BASE_BUNDLE / "model.onnx").read_bytes()
        m["version"] = version
        if onnx is not None:
            model = onnx(model, m)
        m["onnx_sha256"] = hashlib.sha256(model).hexdigest()
        if edit is not None:
            edit(m)
        mbytes = (json.dumps(m, indent=1) + "\n").encode()
        (out / "model.onnx").write_bytes(model)
        (out / "manifest.json").write_bytes(mbytes)
        (out / "manifest.sig").write_bytes(sign_manifest(mbytes, key or keys.private))
        return out
    return make
