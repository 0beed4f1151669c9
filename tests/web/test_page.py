"""The page of a running agent in headless Chromium, and ``edge-agent status`` against it.

`edge-agent run` runs as a subprocess on the simulated pump with the bearing fault scripted
from second 3, its web server on a free loopback port. Chromium (Debian ``chromium``) renders
the page; the DOM must show the gateway id, both sources with their scores and the raised
alarm, and a non-empty score plot. A screenshot is kept as a test artifact (copied to
``$EDGE_AGENT_ARTIFACTS`` when set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
GATEWAY = "page-test-gw"
SOURCES = ("pump-01.de_accel", "pump-01.mic")

CONFIG = """
[agent]
gateway_id = "{gw}"
state_dir = "{state}"
shutdown_timeout = "2s"

[web]
listen = "127.0.0.1:0"
resolution = "1s"

[[drivers]]
kind = "simulator"
name = "sim"
asset = "pump-01"
block = "0.25s"
fault = {{ kind = "outer_race", onset = "3s", growth = "2s" }}

[[pipelines]]
source = "pump-01.de_accel"
features = {{ kind = "vibration" }}
model = {{ path = "builtin:vibration_simulator" }}
alerts = {{ raise_after = 3, clear_after = 10 }}

[[pipelines]]
source = "pump-01.mic"
window = 8192
hop = 4096
features = {{ kind = "sound" }}
model = {{ path = "builtin:sound_simulator" }}
alerts = {{ raise_after = 3, clear_after = 10 }}
"""


def edge_agent() -> list[str]:
    exe = Path(sys.executable).with_name("edge-agent")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_agent.agent.cli"]


@dataclass
class Running:
    url: str
    config: Path
    proc: subprocess.Popen[str]


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/status", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("page")
    cfg = tmp / "agent.toml"
    cfg.write_text(CONFIG.format(gw=GATEWAY, state=tmp / "state"))
    proc = subprocess.Popen([*edge_agent(), "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url_file = tmp / "state" / "web-url"
        deadline = time.monotonic() + 60
        while not url_file.is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the agent never wrote its web URL"
            time.sleep(0.2)
        url = url_file.read_text().strip()
        while True:  # until both sources are scored and the fault has raised the alarm
            snap = _status(url)
            srcs = {s["id"]: s for s in snap["sources"]}
            if all(srcs[s]["score"] is not None for s in SOURCES) and \
                    srcs[SOURCES[0]]["alarm"]:
                break
            assert time.monotonic() < deadline, snap["sources"]
            time.sleep(0.5)
        yield Running(url, cfg, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def chromium_cmd(tmp: Path, *args: str) -> list[str]:
    """Headless Chromium with a fresh profile; fails (not skips) when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package chromium "
                    "(`make test` does it when run as root)")
    profile = tmp / f"profile-{time.monotonic_ns()}"
    return [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=6000",
            *args]


def chromium(tmp: Path, *args: str) -> str:
    r = subprocess.run(chromium_cmd(tmp, *args), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


class Dom(HTMLParser):
    """Text per element id / source card, and the score plots' polylines."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: dict[str, str] = {}
        self.polylines: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        key = a.get("data-source") or a.get("id") or ""
        if tag in ("br", "meta", "link", "input", "polyline", "line", "rect"):
            if tag == "polyline" and a.get("points"):
                self.polylines.append(str(a["points"]))
            return
        self.stack.append(key)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("br", "meta", "link", "input", "polyline", "line", "rect"):
            return
        if self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for key in {k for k in self.stack if k}:
            self.text[key] = self.text.get(key, "") + data


def test_page_shows_gateway_sources_scores_and_alarm(running: Running,
                                                     tmp_path: Path) -> None:
    html = chromium(tmp_path, "--window-size=1024,1400", "--dump-dom", f"{running.url}/")
    dom = Dom()
    dom.feed(html)
    assert dom.text.get("gateway-id") == GATEWAY, html[:2000]
    for src in SOURCES:
        card = dom.text.get(src)
        assert card is not None, f"no card for {src}"
        assert re.search(r"\d\.\d+\s*score", card), card[:300]  # the latest score, rendered
        assert "threshold" in card
    assert "ALARM" in dom.text[SOURCES[0]] and "Alarm raised" in dom.text[SOURCES[0]]
    assert "anomaly raised" in dom.text[SOURCES[0]]
    assert len(dom.polylines) == 2
    for pts in dom.polylines:  # non-empty plots with real coordinates
        coords = [tuple(map(float, p.split(","))) for p in pts.split()]
        assert len(coords) >= 3 and len({y for _, y in coords}) > 1, pts
    assert "healthy" in dom.text.get("health", "")

    shot = tmp_path / "status-page.png"
    chromium(tmp_path, "--window-size=1024,1400", f"--screenshot={shot}", f"{running.url}/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    phone = tmp_path / "status-page-phone.png"
    chromium(tmp_path, "--window-size=390,1600", f"--screenshot={phone}", f"{running.url}/")
    artifacts = os.environ.get("EDGE_AGENT_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        for p in (shot, phone):
            shutil.copy(p, Path(artifacts) / p.name)


def test_status_command_prints_the_same_summary(running: Running) -> None:
    r = subprocess.run([*edge_agent(), "status", "-c", str(running.config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(GATEWAY) and "health: ok" in r.stdout
    for src in SOURCES:
        assert src in r.stdout
    assert f"{SOURCES[0]}: ALARM" in r.stdout and "alarm since" in r.stdout
    j = subprocess.run([*edge_agent(), "status", "-c", str(running.config), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert json.loads(j.stdout)["gateway"]["id"] == GATEWAY


def test_status_command_fails_when_the_agent_is_unreachable(running: Running) -> None:
    r = subprocess.run([*edge_agent(), "status", "-c", str(running.config),
                        "--url", f"http://127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot read" in r.stderr
