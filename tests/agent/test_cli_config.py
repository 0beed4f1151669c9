"""check-config and run: bad config exits 78 naming every key; good config prints a summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "edge_agent.agent.cli"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env, check=False)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_version() -> None:
    from edge_agent import __version__

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"edge-agent {__version__}"


def test_embedded_default_and_example_are_valid() -> None:
    r = cli("check-config")
    assert r.returncode == 0, r.stderr
    assert "simulator" in r.stdout and "pipelines: 2" in r.stdout
    r = cli("check-config", "-c", str(REPO / "config.example.toml"))
    assert r.returncode == 0, r.stderr


BAD = """
[agent]
gateway_id = "gw 1"
shutdown_timeout = "forever"
colour = "blue"

[buffer]
max_size = "lots"

[uploader]
url = "http://127.0.0.1:1/"
api_key = "${EDGE_KEY}"
api_key_file = "/etc/key"

[[drivers]]
kind = "simulator"
name = "sim"
block = "0s"

[[drivers]]
kind = "teleporter"

[[drivers]]
kind = "simulator"
name = "sim"

[[pipelines]]
source = "pump-01.de_accel"
window = 8
features = { kind = "vibration" }
"""


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_78_and_names_each_key(tmp_path: Path, command: str) -> None:
    r = cli(command, "-c", str(write(tmp_path, BAD)))
    assert r.returncode == 78, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    for key in ("agent.gateway_id", "agent.shutdown_timeout", "agent.colour: unknown key",
                "buffer.max_size", "uploader.api_key: give either api_key or api_key_file",
                "drivers[0].block: must be > 0", "drivers[1].kind: must be one of",
                "pipelines[0].window: must be > 16"):
        assert any(line.startswith(key) for line in lines), (key, lines)
    assert "EDGE_KEY" not in r.stdout  # nothing secret or resolved is echoed


def test_cross_checks_name_keys(tmp_path: Path) -> None:
    text = """
[[drivers]]
kind = "simulator"
name = "sim"
[[drivers]]
kind = "simulator"
name = "sim"
asset = "pump-02"
[[pipelines]]
source = "pump-09.de_accel"
features = { kind = "vibration" }
"""
    r = cli("check-config", "-c", str(write(tmp_path, text)))
    assert r.returncode == 78
    assert "drivers[1].name: duplicate name 'sim' (also drivers[0])" in r.stderr
    assert "pipelines[0].source: no driver produces waveform 'pump-09.de_accel'" in r.stderr


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    r = cli("check-config", "-c", str(tmp_path / "missing.toml"))
    assert r.returncode == 78 and "cannot read" in r.stderr
    r = cli("check-config", "-c", str(write(tmp_path, "[agent\nx=")))
    assert r.returncode == 78 and "not valid TOML" in r.stderr


def test_unusable_state_dir_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = write(tmp_path, f'[agent]\nstate_dir = "{blocker}/state"\n[web]\nenabled = false\n')
    r = cli("run", "-c", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("edge-agent: cannot start:") and "Traceback" not in r.stderr


def test_non_finite_numbers_and_bad_ports_are_config_errors(tmp_path: Path) -> None:
    text = """
[agent]
health_interval = inf
[web]
listen = "127.0.0.1:99999"
[[drivers]]
kind = "simulator"
noise_g = nan
[[pipelines]]
source = "pump-01.de_accel"
threshold = nan
features = { kind = "vibration" }
"""
    r = cli("check-config", "-c", str(write(tmp_path, text)))
    assert r.returncode == 78
    for key in ("agent.health_interval", "web.listen: port 99999",
                "drivers[0].noise_g: must be a finite number", "pipelines[0].threshold"):
        assert key in r.stderr, (key, r.stderr)


def test_one_agent_per_state_dir(tmp_path: Path) -> None:
    cfg = write(tmp_path, f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                          '[web]\nenabled = false\n'
                          '[[drivers]]\nkind = "simulator"\nmicrophone = false\n')
    first = subprocess.Popen([*CLI, "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        import time

        time.sleep(3)
        second = cli("run", "-c", str(cfg))
        assert second.returncode == 1
        assert "another edge-agent is already running" in second.stderr
        assert first.poll() is None  # the first one is undisturbed
    finally:
        first.terminate()
        first.communicate(timeout=30)
    assert first.returncode == 0
