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
    # The example describes a plant machine: its files and ${EDGE_API_KEY} are not here.
    r = cli("check-config", "--no-world-checks", "-c", str(REPO / "config.example.toml"))
    assert r.returncode == 0, r.stderr
    r = cli("check-config", "-c", str(REPO / "config.example.toml"))
    assert r.returncode == 78
    assert "drivers[1].path: /srv/recordings/ims_1st_test matches no file" in r.stderr


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
    cfg = write(tmp_path, f'[agent]\nstate_dir = "{blocker}/state"\n[web]\nenabled = false\n'
                          '[[drivers]]\nkind = "simulator"\n')
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


SIM = '[[drivers]]\nkind = "simulator"\nname = "sim"\nmicrophone = false\n'
VIB = '[[pipelines]]\nsource = "pump-01.de_accel"\nfeatures = { kind = "vibration" }\n'
UA = ('[[drivers]]\nkind = "opcua"\nname = "ua"\nendpoint = "opc.tcp://127.0.0.1:4840"\n'
      '[[drivers.nodes]]\nsensor_id = "t"\nnode_id = "garbage"\n')

# (config text, the one line expected on stderr: its start)
INVALID = {
    "kind as a list": ('[[drivers]]\nkind = ["simulator"]\n',
                       "drivers[0].kind: must be one of 'simulator', 'replay', 'soundcard', "
                       "'modbus', 'opcua', got ['simulator']"),
    "features kind as a list": (SIM + '[[pipelines]]\nsource = "pump-01.de_accel"\n'
                                'features = { kind = ["vibration"] }\n',
                                "pipelines[0].features.kind: must be one of 'vibration', "
                                "'sound', got ['vibration']"),
    "bad TOML": ("[agent\nx=", "config.toml: not valid TOML: "),
    "unknown key": (SIM + '[agent]\ncolour = "blue"\n', "agent.colour: unknown key"),
    "wrong type": (SIM + '[[pipelines]]\nsource = "pump-01.de_accel"\nwindow = "big"\n'
                   'features = { kind = "vibration" }\n',
                   "pipelines[0].window: must be an integer, got 'big'"),
    "wrong type of a duration": ('[[drivers]]\nkind = "simulator"\nblock = true\n',
                                 "drivers[0].block: expected a duration"),
    "missing api_key_file": (SIM + '[uploader]\nurl = "https://ingest.example"\n'
                             'api_key_file = "/nonexistent/edge-api-key"\n',
                             "uploader.api_key: cannot read /nonexistent/edge-api-key"),
    "unset ${EDGE_API_KEY}": (SIM + '[uploader]\nurl = "https://ingest.example"\n'
                              'api_key = "${EDGE_API_KEY}"\n',
                              "uploader.api_key: environment variable EDGE_API_KEY is not set"),
    "missing model path": (SIM + VIB + 'model = { path = "/nonexistent/bundle" }\n',
                           "pipelines[0].model.path: /nonexistent/bundle does not exist"),
    "unknown builtin model": (SIM + VIB + 'model = { path = "builtin:nope" }\n',
                              "pipelines[0].model.path: no built-in model 'nope' (built-in: "),
    "OPC-UA node id": (UA, "drivers[0].nodes[0].node_id: 'garbage' is not an OPC-UA node id"),
    "missing replay path": ('[[drivers]]\nkind = "replay"\nname = "r"\n'
                            'path = "/nonexistent/recordings/*.wav"\n',
                            "drivers[0].path: /nonexistent/recordings/*.wav matches no file"),
    "no driver": ('[agent]\ngateway_id = "gw"\n', "drivers: no driver configured"),
    "credentials in the URL": (SIM + '[uploader]\nurl = "https://edge:hunter2@ingest.example"\n'
                               'api_key = "k"\n',
                               "uploader.url: must not carry credentials (user:password@); "
                               "give the key in api_key"),
    "query in the URL": (SIM + '[uploader]\nurl = "https://ingest.example/v?token=hunter2"\n'
                         'api_key = "k"\n', "uploader.url: must not have a ?query"),
    "credentials in an OPC-UA endpoint": (
        UA.replace("127.0.0.1", "plc:hunter2@127.0.0.1").replace("garbage", "i=84"),
        "drivers[0].endpoint: must not carry user:password@"),
}


@pytest.mark.parametrize("case", INVALID)
def test_each_invalid_config_is_one_line_and_exit_78(
        tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.agent.cli import main

    monkeypatch.delenv("EDGE_API_KEY", raising=False)
    text, line = INVALID[case]
    assert main(["check-config", "-c", str(write(tmp_path, text))]) == 78
    out, err = capsys.readouterr()
    lines = [x.replace(f"{tmp_path}/", "") for x in err.splitlines()]
    assert len(lines) == 1 and lines[0].startswith(line), lines
    assert out == "" and "Traceback" not in err and "hunter2" not in err


def test_non_utf8_file_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes(SIM.encode() + '[agent]\ngateway_id = "gw"  # Gerät\n'.encode("latin-1"))
    r = cli("check-config", "-c", str(p))
    assert r.returncode == 78
    assert r.stderr.splitlines() == [f"{p}: is not UTF-8 text (byte 0xe4 on line 6)"]


@pytest.mark.parametrize("case", ["unset ${EDGE_API_KEY}", "unknown builtin model",
                                  "kind as a list"])
def test_run_refuses_the_same_configs_before_starting(tmp_path: Path, case: str) -> None:
    text, line = INVALID[case]
    env = {k: v for k, v in os.environ.items() if k != "EDGE_API_KEY"}
    r = subprocess.run([*CLI, "run", "--state-dir", str(tmp_path / "state"), "-c",
                        str(write(tmp_path, text))], capture_output=True, text=True,
                       timeout=120, env=env, check=False)
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines()[0].startswith(line) and len(r.stderr.splitlines()) == 1
    assert r.stdout == "" and not (tmp_path / "state").exists()  # nothing started


def test_secrets_are_never_printed_or_logged(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cr3t-from-file\n")
    text = (f'[agent]\nstate_dir = "{tmp_path / "state"}"\n[metrics]\nenabled = false\n'
            '[uploader]\nurl = "http://127.0.0.1:9/ingest-base"\napi_key = "s3cr3t-literal"\n'
            + SIM + '[[drivers]]\nkind = "opcua"\nname = "ua"\n'
            'endpoint = "opc.tcp://127.0.0.1:9"\nusername = "u"\n'
            f'password_file = "{key_file}"\n'
            '[[drivers.nodes]]\nsensor_id = "t"\nnode_id = "ns=2;s=T"\n')
    cfg = write(tmp_path, text)
    r = cli("check-config", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "uploader: http://127.0.0.1:9/ingest-base" in r.stdout
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text(text + '[buffer]\nmax_size = "x"\n')
    bad = cli("check-config", "-c", str(bad_cfg))
    assert bad.returncode == 78 and bad.stderr.startswith("buffer.max_size")
    run = subprocess.Popen([*CLI, "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    first: list[str] = []
    try:
        assert run.stdout is not None
        for log_line in run.stdout:  # JSON log lines; wait until start-up has been logged
            first.append(log_line)
            if "agent running" in log_line:
                break
    finally:
        run.terminate()
        out, err = run.communicate(timeout=60)
    out = "".join(first) + out
    assert run.returncode == 0, err
    assert "agent running" in out and "127.0.0.1:9/ingest-base" in out
    for stream in (r.stdout, r.stderr, bad.stdout, bad.stderr, out, err):
        assert "s3cr3t" not in stream


def test_uploader_endpoint_keeps_a_query_out_of_the_path() -> None:
    from edge_agent.sync.contract import UploaderConfig

    built_in_code = UploaderConfig(url="https://h.example/base/?tenant=7")
    assert built_in_code.endpoint == "https://h.example/base/api/v1/data/ingest?tenant=7"
    assert UploaderConfig(url="https://h.example").endpoint == \
        "https://h.example/api/v1/data/ingest"
