"""The web server in-process on a real pipeline and buffer: /healthz follows progress, /metrics
follows Prometheus conventions, the API and headers, token auth and no secret in any byte."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import settings
from edge_agent.agent import config
from edge_agent.agent.pipeline import Pipeline
from edge_agent.agent.status import StatusService
from edge_agent.agent.web import STATIC, WebServer, session_value
from edge_agent.agent.webconfig import hash_password
from edge_agent.drivers.base import DriverHealth, DriverOutput
from edge_agent.records import Reading
from edge_agent.sync.buffer import Buffer, BufferConfig

TOKEN = "web-token-0123456789abcdef"
API_KEY = "uploader-api-key-5f3e2d1c"
MQTT_PASSWORD = "mqtt-password-9a8b7c6d"


@dataclass(frozen=True)
class _Cfg:
    block: float = 0.1


class StallableDriver:
    """Streams one reading per 0.1 s; ``stall`` keeps it connected but silent."""

    name = "plc"
    streaming = True

    def __init__(self) -> None:
        self.cfg = _Cfg()
        self._health = DriverHealth("plc", "fake")
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def open(self) -> None:
        self._health.connected = True

    async def read(self) -> DriverOutput:
        await self.flowing.wait()
        await asyncio.sleep(0.1)
        self._health.ok(1)
        return [Reading("plc.temp", "temperature", 21.5, "C", time.time())]

    async def close(self) -> None:
        self._health.connected = False

    def health(self) -> DriverHealth:
        return self._health


class FakeMqttSink:
    def stats(self) -> dict[str, object]:
        return {"state": "connected", "broker": "127.0.0.1:1883", "published": 3,
                "password": MQTT_PASSWORD}


@dataclass
class Agent:
    url: str
    driver: StallableDriver
    server: WebServer
    buffer: Buffer


PASSWORD = "basic-password-42x"
PASSWORD_HASH = hash_password(PASSWORD, log_n=12)


def _cfg(tmp: Path, token: str | None) -> config.AgentConfig:
    web: dict[str, Any] = {"listen": "127.0.0.1:0", "stall_after": "500ms"}
    if token == "basic":
        web.update(basic_user="tech", basic_password_hash=PASSWORD_HASH)
    elif token:
        web["auth_token"] = token
    # The pipeline runs fake drivers (built below), so the file names none: validate the
    # sections without the whole-file cross checks (which want a [[drivers]] table).
    return settings.parse(config.AgentConfig, {
        "agent": {"gateway_id": "gw-web-test", "state_dir": str(tmp / "state"),
                  "shutdown_timeout": "1s"},
        # An ingest URL nobody listens on: the uploader retries, its key must never show.
        "uploader": {"url": "http://127.0.0.1:9/ingest", "api_key": API_KEY},
        "web": web})


async def _agent(tmp: Path, token: str | None) -> AsyncIterator[Agent]:
    from edge_agent.sync.uploader import Uploader

    cfg = _cfg(tmp, token)
    cfg.state_dir.mkdir(parents=True)
    buffer = Buffer(cfg.state_dir / "buffer.db", BufferConfig())
    await buffer.start()
    drv = StallableDriver()
    pipeline = Pipeline(cfg, [drv], buffer, Uploader(buffer, cfg.uploader, "gw-web-test"))
    pipeline.sinks = {"mqtt": FakeMqttSink()}  # type: ignore[attr-defined]
    server = WebServer(cfg.web, StatusService(pipeline, pipeline.recorder, 0.5, ttl=0.0),
                       None if token == "basic" else token)
    url = await server.start()
    assert url is not None
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        yield Agent(url, drv, server, buffer)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await server.stop()
        await buffer.close()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async for a in _agent(tmp_path, None):
        yield a


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Agent]:
    async for a in _agent(tmp_path, TOKEN):
        yield a


@pytest.fixture
async def basic(tmp_path: Path) -> AsyncIterator[Agent]:
    async for a in _agent(tmp_path, "basic"):
        yield a


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_basic_auth_with_a_hashed_password(basic: Agent) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{basic.url}/") as r:  # the browser asks for user and password
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
        good = _basic("tech", PASSWORD)
        for auth, code in ((_basic("tech", "wrong-password"), 401),
                           (_basic("other", PASSWORD), 401), ({"Authorization": "Basic %%%"}, 401),
                           (good, 200), (good, 200)):
            async with s.get(f"{basic.url}/api/status", headers=auth) as r:
                assert r.status == code, auth
        async with s.get(f"{basic.url}/metrics", headers=good) as r:
            body = await r.read()
            assert r.status == 200 and PASSWORD_HASH.encode() not in body
        async with s.get(f"{basic.url}/api/status", headers=good) as r:
            assert PASSWORD_HASH.split("$")[-1].encode() not in await r.read()


async def _health(s: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with s.get(f"{url}/healthz") as r:
        return r.status, await r.json()


async def _connected(s: aiohttp.ClientSession, url: str) -> None:
    for _ in range(50):
        async with s.get(f"{url}/api/status") as r:
            if (await r.json())["drivers"][0]["connected"]:
                return
        await asyncio.sleep(0.1)
    pytest.fail("the driver never connected")


async def _until(s: aiohttp.ClientSession, url: str, status: int, within: float
                 ) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        code, body = await _health(s, url)
        if code == status:
            return body
        assert time.monotonic() < deadline, (code, body)
        await asyncio.sleep(0.1)


async def test_healthz_turns_503_when_a_driver_stalls_and_back(agent: Agent) -> None:
    async with aiohttp.ClientSession() as s:
        await _connected(s, agent.url)
        await _until(s, agent.url, 200, 5.0)
        agent.driver.flowing.clear()  # connected, but nothing delivered any more
        body = await _until(s, agent.url, 503, 5.0)
        assert body["status"] == "stalled"
        assert any(r.startswith("driver plc: connected but nothing delivered")
                   for r in body["reasons"]), body
        agent.driver.flowing.set()
        body = await _until(s, agent.url, 200, 5.0)
        assert body == {"status": "ok", "reasons": [], "checked_at": body["checked_at"]}


async def test_healthz_turns_503_when_the_buffer_writer_stops_committing(agent: Agent,
                                                                        ) -> None:
    release = threading.Event()
    async with aiohttp.ClientSession() as s:
        await _connected(s, agent.url)
        await _until(s, agent.url, 200, 5.0)
        # Occupy the writer thread (as a hung disk would): readings pile up uncommitted.
        held = agent.buffer.submit(lambda _store: release.wait(30))
        try:
            body = await _until(s, agent.url, 503, 5.0)
            assert any(r.startswith("buffer: no commit") for r in body["reasons"]), body
        finally:
            release.set()
        await held
        await _until(s, agent.url, 200, 5.0)


async def test_metrics_follow_prometheus_conventions(agent: Agent) -> None:
    async with aiohttp.ClientSession() as s:
        await _connected(s, agent.url)
        async with s.get(f"{agent.url}/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert "edge_agent_build_info" in fams and "process_cpu_seconds" in fams
    for f in fams.values():
        names = {smp.name for smp in f.samples}
        if any(n.endswith("_total") for n in names) and f.type != "counter":
            pytest.fail(f"{f.name} has _total samples but type {f.type}")
        if f.type == "counter":
            assert all(n.endswith(("_total", "_created")) for n in names), f.name
        if f.name.startswith("edge_agent_"):
            assert f.documentation and f.documentation != f.name.replace("_", " "), f.name
            assert not f.name.endswith(("_s", "_ms", "_bytes_total_bytes")), f.name
        for smp in f.samples:
            assert len(smp.labels) == len(set(smp.labels)), smp
        series = [(smp.name, tuple(sorted(smp.labels.items()))) for smp in f.samples]
        assert len(series) == len(set(series)), f"{f.name}: a series appears twice"
    labels = {k for f in fams.values() for smp in f.samples for k in smp.labels}
    assert {"driver", "sink", "queue"} <= labels and "name" not in labels
    by = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
          for f in fams.values() for smp in f.samples}
    assert by[("edge_agent_driver_connected", (("driver", "plc"),))] == 1.0
    assert by[("edge_agent_sink_state", (("sink", "mqtt"), ("state", "connected")))] == 1.0
    assert by[("edge_agent_buffer_commits_total", ())] > 0
    assert fams["edge_agent_buffer_commits"].type == "counter"
    assert fams["edge_agent_buffer_oldest_unsent_age_seconds"].type == "gauge"
    lag = fams["edge_agent_reading_commit_lag_seconds"]     # tick -> commit of every reading
    assert lag.type == "histogram"
    cum = [smp.value for smp in lag.samples if smp.name.endswith("_bucket")]
    count = by[("edge_agent_reading_commit_lag_seconds_count", ())]
    assert count > 0 and cum == sorted(cum) and cum[-1] == count


async def test_api_paths_headers_and_404(agent: Agent) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{agent.url}/api/status") as r:
            assert r.status == 200
            snap = await r.json()
            for h in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy"):
                assert h in r.headers
            csp = r.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert snap["gateway"]["id"] == "gw-web-test"
        assert snap["mqtt"]["state"] == "connected" and "password" not in snap["mqtt"]
        for path, code in (("/nope", 404), ("/api/sources/nope/scores", 404),
                           ("/static/../web.py", 404), ("/api/sources/x/scores?since=abc", 400),
                           ("/static/app.js", 200), ("/", 200)):
            async with s.get(f"{agent.url}{path}") as r:
                assert r.status == code, path
                assert r.headers["X-Content-Type-Options"] == "nosniff", path
        async with s.post(f"{agent.url}/api/status") as r:
            assert r.status == 405  # read-only


async def test_token_required_and_login_cookie_is_not_the_token(secured: Agent) -> None:
    url = secured.url
    # Browsers keep cookies of IP-address hosts; aiohttp's jar needs unsafe=True for that.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        for path in ("/api/status", "/metrics", "/api/sources/x/scores"):
            async with s.get(f"{url}{path}") as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        async with s.get(f"{url}/", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/login"
        async with s.get(f"{url}/api/status",
                         headers={"Authorization": "Bearer wrong-token-000000000"}) as r:
            assert r.status == 401
        async with s.get(f"{url}/api/status", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        async with s.post(f"{url}/login", data={"token": "nope"}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/login")
        async with s.post(f"{url}/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
            assert session_value(TOKEN) in cookie
        async with s.get(f"{url}/api/status") as r:  # the session cookie now authorizes
            assert r.status == 200


async def test_no_secret_in_any_served_byte(secured: Agent) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    paths = ["/", "/login", "/api/status", "/healthz", "/metrics",
             "/api/sources/none/scores?since=0", "/nope"]
    paths += [f"/static/{p.name}" for p in STATIC.iterdir()]
    served = b""
    async with aiohttp.ClientSession() as s:
        await asyncio.sleep(1.5)  # the uploader has tried (and failed) to send with its key
        for headers in (auth, {}):
            for p in paths:
                async with s.get(f"{secured.url}{p}", headers=headers,
                                 allow_redirects=False) as r:
                    served += repr(dict(r.headers)).encode() + await r.read()
    assert b"gw-web-test" in served and b"mqtt" in served  # the status was served
    for secret in (TOKEN, API_KEY, MQTT_PASSWORD):
        assert secret.encode() not in served, secret


def test_page_weight_is_under_300kb() -> None:
    total = sum(p.stat().st_size for p in STATIC.iterdir())
    assert 0 < total <= 300_000, total


async def test_browser_without_token_gets_the_login_page(secured: Agent, tmp_path: Path) -> None:
    """Chromium on the page of an agent with a token: the login form, no plant data."""
    from tests.web.test_page import chromium_cmd

    for path, shown in (("/", False), ("/login?failed=1", True)):
        proc = await asyncio.create_subprocess_exec(
            *chromium_cmd(tmp_path, "--dump-dom", f"{secured.url}{path}"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        dom = out.decode()
        assert proc.returncode == 0, err[-2000:]
        assert '<form method="post" action="/login"' in dom, dom[:1000]
        assert "gw-web-test" not in dom and TOKEN not in dom
        assert ('id="failed" class="banner" hidden' in dom) is not shown


def test_collector_aggregates_per_label_and_skips_unknowns() -> None:
    from prometheus_client import generate_latest

    from edge_agent.agent.metrics import registry

    snap = {"gateway": {"version": "1", "id": "g", "started": 5.0, "disk": {}},
            "health": {"status": "stalled"},
            "pipeline": {"readings_dropped": {"not_finite:a": 1, "not_finite:b": 2,
                                              "repeat:a": 4}},
            "sync": {"state": "auth_failed", "last_success": None},
            "mqtt": {"state": "not configured"},
            "sources": [{"id": "s", "model": None, "score": float("nan")}]}
    text = generate_latest(registry(lambda: snap)).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    refused = {smp.labels["reason"]: smp.value
               for smp in fams["edge_agent_readings_refused"].samples}
    assert refused == {"not_finite": 3.0, "repeat": 4.0}
    assert 'edge_agent_sink_state{sink="uploader",state="auth_failed"} 1.0' in text
    assert 'sink="mqtt"' not in text  # not configured: no series
    assert "edge_agent_healthy 0.0" in text
    assert "edge_agent_model_info" not in text and "edge_agent_anomaly_score" not in text
