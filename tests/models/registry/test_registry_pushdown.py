"""Model push-down end to end against a real MLflow server (issue 12).

One pipeline (the simulated pump's drive-end accelerometer) runs its real analysis chain on
simulated waveforms while the registry poller follows the alias. Versions are published with the
agent's own ``edge-agent models publish`` and the alias moved step after step:
v1 good → deployed; v2 good → deployed with no window dropped across the swap; v3 bad signature,
v4 wrong feature contract, v5 corrupt ONNX, v6 reference scores off, v7 oversized → each refused
with its reason while v2 keeps scoring; v8 passes every check but scores far outside its
reference distribution in service → rolled back to v2; ``models rollback`` by command; the agent
killed mid-download and restarted → staging cleaned, nothing half loaded, the version deployed;
the registry unreachable for a while → scoring goes on, the next version comes after it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_agent.agent import config
from edge_agent.agent.analysis import Analysis
from edge_agent.agent.cli import main as edge_agent_main
from edge_agent.drivers.simulator import Config as SimConfig
from edge_agent.drivers.simulator import FaultScript, SimulatedPlant
from edge_agent.models.builtin import resolve_model
from edge_agent.models.registry.poller import RegistryPoller
from edge_agent.records import Event, FeatureVector, WaveformBlock

from .conftest import BundleMaker, Keys, MlflowServer, Proxy, far_out_of_service_onnx

SOURCE = "pump-01.de_accel"
HOP_S = 1024 / 20000.0
pytestmark = pytest.mark.timeout(240)


def agent_config(state: Path, tracking_uri: str, name: str, keys: Keys) -> config.AgentConfig:
    return config.parse({
        "agent": {"gateway_id": "gw-test", "state_dir": str(state)},
        "drivers": [{"kind": "simulator", "name": "sim", "microphone": False}],
        "pipelines": [{
            "source": SOURCE, "window": 2048, "hop": 1024, "features": {"kind": "vibration"},
            "model": {"path": "builtin:vibration_simulator"},
            "registry": {"tracking_uri": tracking_uri, "model_name": name,
                         "alias": "edge-production", "poll_interval": "200ms",
                         "trusted_keys": [str(keys.public_pem)], "keep_versions": 3,
                         "max_bundle_size": "1MiB", "probation_windows": 20,
                         "username": "edge", "password": "pw-secret"},
        }],
    })


class Plant:
    """Feeds the analysis 0.25 s simulated blocks as fast as a 2-core box comfortably allows."""

    def __init__(self, an: Analysis, start: float = 1.8e9) -> None:
        self.an = an
        self.sim = SimulatedPlant(SimConfig(kind="simulator", microphone=False, block=0.25,
                                            fault=FaultScript(kind="none")), start)
        self.vectors: list[FeatureVector] = []
        self.events: list[Event] = []
        self.start = start

    async def run(self) -> None:
        while True:
            for rec in self.sim.next_block():
                if isinstance(rec, WaveformBlock) and rec.source_id == SOURCE:
                    vectors, events = self.an.process(rec)
                    self.vectors += vectors
                    self.events += events
            await asyncio.sleep(0.015)

    def version(self) -> str | None:
        cur = self.an.slot.current if self.an.slot else None
        return cur.ref.version if cur else None


class Agent:
    """The analysis chain and the poller of one pipeline, as the daemon wires them."""

    def __init__(self, cfg: config.AgentConfig, put: Callable[[list[Any]], Any]) -> None:
        p = cfg.pipelines[0]
        assert p.registry is not None
        self.an = Analysis(p, cfg.state_dir)
        self.plant = Plant(self.an)
        assert p.model is not None
        self.poller = RegistryPoller(p.registry, self.an, cfg.state_dir, cfg.agent.gateway_id,
                                     put, configured_model=resolve_model(p.model.path))
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.plant.run()),
                      asyncio.create_task(self.poller.run())]

    async def kill(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def publish(url: str, name: str, bundle: Path, alias: str = "edge-production") -> str:
    """``edge-agent models publish`` (the real command, in a worker thread)."""
    def run() -> int:
        return edge_agent_main(["models", "publish", str(bundle), "--tracking-uri", url,
                                "--name", name, "--alias", alias])
    assert await asyncio.to_thread(run) == 0
    async with httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/api/2.0/mlflow/registered-models/alias",
                        params={"name": name, "alias": alias})
        return str(r.json()["model_version"]["version"])


async def wait_for(pred: Callable[[], Any], within: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or pred}")


async def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A command in a worker thread: the pipeline keeps running meanwhile."""
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                   timeout=60)


def contiguous(vectors: list[FeatureVector]) -> bool:
    starts = np.array([v.window_start for v in vectors])
    return bool(np.allclose(np.diff(starts), HOP_S, rtol=0, atol=1e-6))


async def test_pushdown_campaign(mlflow_server: MlflowServer, proxy: Proxy, keys: Keys,
                                 make_bundle: BundleMaker, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.models.registry")
    name, url = "pump-vibration", mlflow_server.url
    state = tmp_path / "state"
    cfg = agent_config(state, proxy.url, name, keys)
    events: list[Event] = []

    async def put(records: list[Any]) -> None:
        events.extend(r for r in records if isinstance(r, Event))

    def ev(kind: str, version: str, **match: Any) -> Event | None:
        return next((e for e in events if e.kind == kind and e.details.get("version") == version
                     and all(e.details.get(k) == v for k, v in match.items())), None)

    agent = Agent(cfg, put)
    agent.start()
    plant = agent.plant

    def grown(n: int) -> bool:
        return len(plant.vectors) > n

    # v1 good → deployed (and the deployment reported as a tag on the version)
    assert await publish(url, name, make_bundle("r1")) == "1"
    await wait_for(lambda: ev("model_deployed", "1"), what="v1 deployed")
    await wait_for(lambda: plant.version() == "r1")
    dep = ev("model_deployed", "1")
    assert dep is not None and dep.details["tagged"] is True
    async with httpx.AsyncClient(base_url=url) as c:
        mv = (await c.get("/api/2.0/mlflow/model-versions/get",
                          params={"name": name, "version": "1"})).json()["model_version"]
    assert any(t["key"] == "edge.gw-test.deployed" for t in mv.get("tags", []))
    assert any(b"authorization: basic" in h.lower() for h in proxy.heads)

    # v2 good → deployed between two windows: none dropped, every window scored
    assert await publish(url, name, make_bundle("r2")) == "2"
    await wait_for(lambda: ev("model_in_service", "2"), what="v2 through probation")
    vs = [v for v in plant.vectors if v.model is not None]
    swap = next(i for i, v in enumerate(vs) if v.model and v.model.version == "r2")
    around = vs[swap - 50: swap + 50]
    before = vs[swap - 1].model
    assert before is not None and before.version == "r1"
    assert contiguous(around) and all(v.score is not None for v in around)
    assert contiguous(plant.vectors)

    # v3..v7 refused, each with its reason, v2 keeps scoring
    bad = {
        "signature": make_bundle("r3", key=keys.other_private),
        "contract": make_bundle("r4", edit=lambda m: m["extractor"].update(window=4096)),
        "onnx": make_bundle("r5", onnx=lambda b, m: b[: len(b) // 3]),
        "references": make_bundle("r6", edit=lambda m: [r.update(score=r["score"] + 0.05)
                                                         for r in m["references"]]),
        "size": make_bundle("r7", onnx=lambda b, m: b + bytes(1_100_000)),
    }
    for i, (step, bundle) in enumerate(bad.items(), start=3):
        v = await publish(url, name, bundle)
        assert v == str(i)
        refused = await wait_for(functools.partial(ev, "model_refused", v), what=f"v{v} refused")
        assert refused.details["step"] == step, refused.details
        assert refused.details["kept"] == "2"
        n = len(plant.vectors)
        await wait_for(functools.partial(grown, n + 10))
        assert plant.version() == "r2"
        assert all(v.model and v.model.version == "r2" and v.score is not None
                   for v in plant.vectors[n:])
    assert not (state / "registry" / SOURCE / "versions" / "7").exists()
    assert list((state / "registry" / SOURCE / "staging").iterdir()) == []

    # v8: passes every check in staging, scores far outside its references in service
    v8 = make_bundle("r8", onnx=lambda b, m: far_out_of_service_onnx(b, len(m["references"])))
    assert await publish(url, name, v8) == "8"
    await wait_for(lambda: ev("model_deployed", "8"), what="v8 deployed")
    back = await wait_for(lambda: ev("model_rolled_back", "8"), what="v8 rolled back")
    assert back.details["to"] == "2" and back.details["by"] == "automatic"
    assert "far outside the reference distribution" in back.details["reason"]
    await wait_for(lambda: plant.version() == "r2")
    await asyncio.sleep(1.0)  # the alias still names v8: it is not deployed again
    assert sum(e.kind == "model_deployed" and e.details["version"] == "8" for e in events) == 1

    # manual rollback by command: v2 out, v1 back in
    out = await run([sys.executable, "-m", "edge_agent.agent.cli", "models", "rollback",
                     SOURCE, "--state-dir", str(state)])
    assert out.returncode == 0, out.stderr
    by_cmd = await wait_for(lambda: ev("model_rolled_back", "2"), what="rollback by command")
    assert by_cmd.details == {**by_cmd.details, "to": "1", "by": "command"}
    await wait_for(lambda: plant.version() == "r1")

    # killed mid-download → the next start cleans staging and deploys the version; a rollback
    # by command while the agent was down (past the oldest kept version: back to the configured
    # model) is reported when it starts
    await agent.kill()
    out = await run([sys.executable, "-m", "edge_agent.agent.cli", "models", "rollback",
                     SOURCE, "--state-dir", str(state)])
    assert out.returncode == 0 and "the configured model" in out.stdout, out.stderr
    assert await publish(url, name, make_bundle("r9")) == "9"
    killed = await run([sys.executable, "-c", KILL_MID_DOWNLOAD, str(state), url, name])
    assert killed.returncode == -9, killed.stderr
    partial = list((state / "registry" / SOURCE / "staging").glob("9.*/*"))
    assert partial, "the killed download left nothing to clean"
    assert not (state / "registry" / SOURCE / "versions" / "9").exists()
    n_events = len(events)
    agent = Agent(cfg, put)
    agent.start()
    plant = agent.plant
    cleaned = await wait_for(lambda: [e for e in events[n_events:]
                                      if e.kind == "model_staging_cleaned"])
    assert cleaned[0].details["removed"]
    offline = await wait_for(lambda: ev("model_rolled_back", "1", by="command"))
    assert offline.details["to"] is None
    await wait_for(lambda: ev("model_deployed", "9"), what="v9 deployed after restart")
    assert ev("model_deployed", "9").details["previous"] is None  # type: ignore[union-attr]
    assert json.loads((state / "registry" / SOURCE / "versions" / "9" / "manifest.json")
                      .read_text())["version"] == "r9"

    # the registry unreachable for a while: scoring goes on; the next version after it returns
    caplog.clear()
    await proxy.stop()
    assert await publish(url, name, make_bundle("r10")) == "10"
    n = len(plant.vectors)
    await asyncio.sleep(2.0)
    assert len(plant.vectors) > n + 20
    assert all(v.score is not None for v in plant.vectors[n:])
    assert ev("model_version_found", "10") is None
    unreachable = [r for r in caplog.records if r.getMessage().startswith("registry unreachable")]
    assert len(unreachable) == 1, [r.getMessage() for r in caplog.records]
    await proxy.start()
    await wait_for(lambda: ev("model_deployed", "10"), what="v10 after the registry returned")
    assert any(r.getMessage() == "registry answers again" for r in caplog.records)
    assert plant.version() == "r10"

    # a restart puts the deployed version back in service from disk, without the registry
    await agent.kill()
    await proxy.stop()
    n_events = len(events)
    agent = Agent(cfg, put)
    agent.start()
    restored = await wait_for(lambda: [e for e in events[n_events:] if e.kind == "model_loaded"
                                       and e.details.get("restored")])
    assert restored[0].details["registry_version"] == "10"
    await wait_for(lambda: agent.plant.version() == "r10")
    await agent.kill()


KILL_MID_DOWNLOAD = r"""
import asyncio, os, signal, sys
from pathlib import Path
from types import SimpleNamespace
from edge_agent.models.registry.config import RegistryConfig
from edge_agent.models.registry.poller import RegistryPoller

state, url, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

async def main():
    cfg = RegistryConfig(tracking_uri=url, model_name=name, trusted_keys=("0" * 64,))
    an = SimpleNamespace(source="pump-01.de_accel", slot=None, score_watch=None)
    poller = RegistryPoller(cfg, an, state, "gw-test", None)
    poller.store.prepare()
    mv = await poller.client().alias_version(name, "edge-production")
    staged = poller.store.new_staging(mv.version)
    def die(n):
        if n > 100_000:
            os.kill(os.getpid(), signal.SIGKILL)
    await poller._download(mv, staged, on_chunk=die)

asyncio.run(main())
"""
