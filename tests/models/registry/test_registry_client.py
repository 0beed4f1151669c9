"""The registry client and poller against the real MLflow server behind a fault-injecting
proxy: failure kinds (one log line each), basic auth, size caps; plus the pieces that need no
server (probation rule, keys, configuration)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge_agent.agent import config
from edge_agent.errors import ConfigError
from edge_agent.models.bundle import Manifest
from edge_agent.models.registry.client import RegistryClient, RegistryFailure, TooLarge
from edge_agent.models.registry.config import RegistryConfig, load_public_key
from edge_agent.models.registry.poller import RegistryPoller
from edge_agent.models.registry.probation import Probation
from edge_agent.models.registry.publish import publish_bundle
from edge_agent.settings import Secret

from .conftest import BASE_BUNDLE, BundleMaker, Keys, MlflowServer, Proxy

pytestmark = pytest.mark.timeout(240)  # includes the server's start when run first


def poller(url: str, tmp_path: Path, keys: Keys, name: str = "kinds") -> RegistryPoller:
    cfg = RegistryConfig(tracking_uri=url, model_name=name, poll_interval=0.2,
                         trusted_keys=(str(keys.public_pem),), username="edge",
                         password=Secret.of("s3cret"))
    an: Any = SimpleNamespace(source="pump-01.de_accel", slot=None, score_watch=None)
    return RegistryPoller(cfg, an, tmp_path, "gw", put=_discard)


async def _discard(records: list[Any]) -> None:
    """These tests read the log lines; the events a poller hands out are not looked at."""


async def test_failure_kinds_one_line_each_and_basic_auth(
        mlflow_server: MlflowServer, proxy: Proxy, keys: Keys, make_bundle: BundleMaker,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.models.registry")
    await publish_bundle(make_bundle("k1"), mlflow_server.url, "kinds", alias="edge-production")
    p = poller(proxy.url, tmp_path, keys)
    try:
        for mode, line in [("500", "registry server error"),
                           ("401", "registry refused the credentials"),
                           ("garbage", "registry answered garbage")]:
            proxy.set_mode(mode)
            caplog.clear()
            before = p.retrier.failures
            delays = [await p.poll_once() for _ in range(3)]
            msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(msgs) == 1 and msgs[0].startswith(line), msgs
            assert p.retrier.failures == before + 3  # backing off, not polling at the interval
            assert all(d <= p.backoff.maximum for d in delays)
        proxy.set_mode("forward")
        with p.store.update() as st:  # the alias's version is settled: nothing to deploy
            st.refused["1"] = "settled for this test"
        caplog.clear()
        assert await p.poll_once() == p.cfg.poll_interval and p.retrier.failures == 0
        assert [r.getMessage() for r in caplog.records] == ["registry answers again"]
        await proxy.stop()
        caplog.clear()
        await p.poll_once()
        await p.poll_once()
        msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert msgs == ["registry unreachable; keeping the current model"]
    finally:
        await p.client().aclose()
    creds = base64.b64encode(b"edge:s3cret")
    assert any(b"authorization: basic " + creds in h.lower().replace(creds.lower(), creds)
               for h in proxy.heads)


async def test_missing_alias_and_model_are_not_found(mlflow_server: MlflowServer) -> None:
    async with RegistryClient(mlflow_server.url) as c:
        for name, alias in [("no-such-model", "a"), ("kinds-missing-alias", "nope")]:
            if name.startswith("kinds"):
                await c.ensure_registered_model(name)
            with pytest.raises(RegistryFailure) as err:
                await c.alias_version(name, alias)
            assert err.value.kind == "not_found"


async def test_download_stops_at_the_size_cap(mlflow_server: MlflowServer,
                                              make_bundle: BundleMaker, tmp_path: Path) -> None:
    out = await publish_bundle(make_bundle("s1"), mlflow_server.url, "size-cap")
    async with RegistryClient(mlflow_server.url) as c:
        path = out["source"].removeprefix("mlflow-artifacts:").strip("/")
        dest = tmp_path / "model.onnx"
        with pytest.raises(TooLarge):
            await c.download(f"{path}/model.onnx", dest, limit=100_000)
        assert not dest.exists() or dest.stat().st_size <= 100_000
        n = await c.download(f"{path}/model.onnx", dest, limit=10_000_000)
    assert n == (BASE_BUNDLE / "model.onnx").stat().st_size == dest.stat().st_size


def test_probation_rules() -> None:
    m = Manifest.from_json((BASE_BUNDLE / "manifest.json").read_bytes())
    ok = Probation(m, windows=20, factor=10.0)
    for _ in range(4):
        ok(np.full(5, 0.5))
    assert ok.passed and ok.failed is None
    far = Probation(m, windows=20, factor=10.0)
    for _ in range(2):
        far(np.full(5, 1e6))
    assert far.failed and "far outside" in far.failed
    errs = Probation(m, windows=20, factor=10.0)
    errs(ValueError("boom"))
    errs(np.array([0.5, np.nan]))
    errs(ValueError("boom again"))
    assert errs.failed and "3 scoring errors" in errs.failed


def test_public_key_forms(keys: Keys, tmp_path: Path) -> None:
    raw = load_public_key(str(keys.public_pem))
    assert len(raw) == 32
    (tmp_path / "k.raw").write_bytes(raw)
    (tmp_path / "k.hex").write_text(raw.hex() + "\n")
    assert load_public_key(str(tmp_path / "k.raw")) == raw
    assert load_public_key(str(tmp_path / "k.hex")) == raw
    assert load_public_key(raw.hex()) == raw
    with pytest.raises(ValueError):
        load_public_key(str(keys.private_pem))


def test_registry_config_keys_and_problems(tmp_path: Path) -> None:
    base = {"drivers": [{"kind": "simulator", "name": "sim"}],
            "pipelines": [{"source": "pump-01.de_accel", "features": {"kind": "vibration"},
                           "registry": {"tracking_uri": "http://mlflow.central:5000",
                                        "model_name": "pump-vibration",
                                        "alias": "edge-production", "poll_interval": "5m",
                                        "username": "edge", "password": "${MLFLOW_PASSWORD}",
                                        "trusted_keys": ["/etc/edge-agent/keys/central.pub"],
                                        "keep_versions": 3, "max_bundle_size": "64MiB"}}]}
    reg = config.parse(base).pipelines[0].registry
    assert reg is not None and reg.poll_interval == 300.0
    assert reg.max_bundle_size == 64 * 1024 * 1024 and reg.password is not None
    assert "MLFLOW_PASSWORD" in repr(reg.password)
    raw = base["pipelines"][0]["registry"]  # type: ignore[index]
    raw.update(keep_versions=0, tracking_uri="mlflow.central", extra=1)
    with pytest.raises(ConfigError) as err:
        config.parse(base)
    keys_bad = {p.key for p in err.value.problems}
    assert {"pipelines[0].registry.keep_versions", "pipelines[0].registry.tracking_uri",
            "pipelines[0].registry.extra"} <= keys_bad


async def test_daemon_pipeline_runs_the_poller_and_buffers_its_events(
        mlflow_server: MlflowServer, keys: Keys, make_bundle: BundleMaker,
        tmp_path: Path) -> None:
    """The real Pipeline (simulator driver, SQLite buffer) wires one poller per registry table;
    its events are committed in the buffer like any other record (hence synced, sent over MQTT
    and shown on the page by the sinks that read the buffer)."""
    import asyncio
    import json
    import sqlite3
    import time

    from edge_agent.agent.daemon import buffer_path, make_drivers
    from edge_agent.agent.pipeline import Pipeline
    from edge_agent.sync.buffer import Buffer

    await publish_bundle(make_bundle("p1"), mlflow_server.url, "wired", alias="edge-production")
    cfg = config.parse({
        "agent": {"gateway_id": "gw-wired", "state_dir": str(tmp_path / "state")},
        "metrics": {"enabled": False},
        "drivers": [{"kind": "simulator", "name": "sim", "microphone": False,
                     "fault": {"kind": "none"}}],
        "pipelines": [{"source": "pump-01.de_accel", "features": {"kind": "vibration"},
                       "model": {"path": "builtin:vibration_simulator"},
                       "registry": {"tracking_uri": mlflow_server.url, "model_name": "wired",
                                    "poll_interval": "1s",
                                    "trusted_keys": [str(keys.public_pem)]}}],
    })
    cfg.state_dir.mkdir(parents=True)
    buf = Buffer(buffer_path(cfg), cfg.buffer)
    await buf.start()
    pipe = Pipeline(cfg, make_drivers(cfg), buf, None)
    stop = asyncio.Event()
    task = asyncio.create_task(pipe.run(stop))

    def rows(sql: str) -> list[dict[str, Any]]:
        con = sqlite3.connect(f"file:{buffer_path(cfg)}?mode=ro", uri=True)
        try:
            return [json.loads(b) for (b,) in con.execute(sql)]
        finally:
            con.close()

    deadline = time.monotonic() + 30
    while not any(e["kind"] == "model_deployed" for e in rows("SELECT body FROM events")):
        assert time.monotonic() < deadline, "no model_deployed event reached the buffer"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    stop.set()
    await task
    await buf.close()
    kinds = [e["kind"] for e in rows("SELECT body FROM events")]
    assert {"model_version_found", "model_deployed", "model_loaded"} <= set(kinds)
    versions = {(f.get("model") or {}).get("version")
                for f in rows("SELECT body FROM features")}
    assert "p1" in versions


def test_keygen_sign_and_unsigned_publish_refused(tmp_path: Path, capsys: Any) -> None:
    import shutil

    from edge_agent.agent.cli import main
    from edge_agent.models.bundle import load_bundle

    assert main(["models", "keygen", "--out", str(tmp_path / "central")]) == 0
    assert main(["models", "keygen", "--out", str(tmp_path / "central")]) == 1  # no overwrite
    assert (tmp_path / "central.key").stat().st_mode & 0o077 == 0
    bundle = tmp_path / "b"
    shutil.copytree(BASE_BUNDLE, bundle)
    # unsigned: publish refuses before talking to any server
    assert main(["models", "publish", str(bundle), "--tracking-uri", "http://127.0.0.1:9",
                 "--name", "x"]) == 1
    assert "not signed" in capsys.readouterr().err
    assert main(["models", "sign", str(bundle), "--key", str(tmp_path / "central.key")]) == 0
    pub = load_public_key(str(tmp_path / "central.pub"))
    assert load_bundle(bundle, public_key=pub).signature is not None
    (bundle / "model.onnx").write_bytes(b"tampered")
    assert main(["models", "sign", str(bundle), "--key", str(tmp_path / "central.key")]) == 1


def test_rollback_command_without_deployments(tmp_path: Path, capsys: Any) -> None:
    from edge_agent.agent.cli import main

    assert main(["models", "rollback", "pump-01.de_accel", "--state-dir", str(tmp_path)]) == 1
    assert "no registry deployments" in capsys.readouterr().err
