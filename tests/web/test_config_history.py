"""``[web]`` validation through ``edge-agent check-config`` and the in-memory score history."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.agent import cli
from edge_agent.agent.health import DriverView, Progress
from edge_agent.agent.history import SourceTrack
from edge_agent.agent.webconfig import check_password, hash_password
from edge_agent.records import Event, FeatureVector

CLI = [sys.executable, "-m", "edge_agent.agent.cli"]
DRIVER = '[[drivers]]\nkind = "simulator"\nname = "sim"\n'  # a config needs a driver


def check(tmp: Path, web: str) -> subprocess.CompletedProcess[str]:
    """``edge-agent check-config`` in this process (the subprocess start costs seconds)."""
    cfg = tmp / "agent.toml"
    cfg.write_text(f"[web]\n{web}\n{DRIVER}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["check-config", "-c", str(cfg)])
    return subprocess.CompletedProcess([], rc, out.getvalue(), err.getvalue())


def test_wide_listen_without_auth_is_exit_78_from_the_command(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[web]\nlisten = "0.0.0.0:8080"\n' + DRIVER)
    r = subprocess.run([*CLI, "check-config", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 78, r.stdout
    assert r.stderr.startswith("web.listen: 0.0.0.0 is not a loopback address")


@pytest.mark.parametrize("listen", ["192.168.1.20:8080", "gateway.local:80", "[::]:8080"])
def test_wide_listen_without_auth_is_refused(tmp_path: Path, listen: str) -> None:
    r = check(tmp_path, f'listen = "{listen}"')
    assert r.returncode == 78, r.stdout
    assert "web.listen:" in r.stderr and "auth_token" in r.stderr


def test_wide_listen_with_a_token_or_file_and_loopback_without(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_WEB_TOKEN", "0123456789abcdef0123")  # check-config checks it is set
    tok = tmp_path / "token"
    tok.write_text("0123456789abcdef0123\n")
    for web in (f'listen = "0.0.0.0:8080"\nauth_token_file = "{tok}"',
                'listen = "0.0.0.0:8080"\nauth_token = "${EDGE_WEB_TOKEN}"',
                'listen = "[::1]:8080"', 'listen = "localhost:8080"'):
        r = check(tmp_path, web)
        assert r.returncode == 0, (web, r.stderr)
        assert "0123456789abcdef0123" not in r.stdout
    r = check(tmp_path, 'listen = "0.0.0.0:8080"\nauth_token = "short"')
    assert r.returncode == 78
    assert "web.auth_token: must be at least 16 characters" in r.stderr
    r = check(tmp_path, 'stall_after = "soon"')
    assert r.returncode == 78 and "web.stall_after: cannot read 'soon'" in r.stderr


def test_basic_auth_config(tmp_path: Path) -> None:
    h = hash_password("a long enough password", log_n=10)
    assert check(tmp_path, f'listen = "0.0.0.0:8080"\nbasic_user = "tech"\n'
                           f'basic_password_hash = "{h}"').returncode == 0
    r = check(tmp_path, 'listen = "0.0.0.0:8080"\nbasic_user = "tech"\n'
                        'basic_password_hash = "plain-password"')
    assert r.returncode == 78 and "web.basic_password_hash: not a hash" in r.stderr
    r = check(tmp_path, 'basic_user = "tech"')
    assert r.returncode == 78 and "web.basic_user: basic_user and basic_password_hash" in r.stderr
    assert check_password("a long enough password", h) and not check_password("nope", h)


def test_old_metrics_listen_says_where_metrics_went(tmp_path: Path) -> None:
    r = check(tmp_path, '[metrics]\nlisten = "127.0.0.1:9108"')
    assert r.returncode == 78 and "metrics.listen: /metrics is served on [web].listen" in r.stderr


def _fv(t: float, score: float | None) -> FeatureVector:
    return FeatureVector("s", t - 0.1, t, {"rms": 1.0}, score=score)


def test_history_keeps_the_max_per_step_bounded_and_alarm_periods() -> None:
    tr = SourceTrack("s", history=60.0, resolution=5.0)
    tr.add_vectors([_fv(100.0, 0.1), _fv(101.0, 0.7), _fv(104.9, 0.2), _fv(105.0, 0.3),
                    _fv(106.0, None), _fv(107.0, float("nan"))])
    assert tr.points_since(0, 110.0) == [[100.0, 0.7], [105.0, 0.3]]
    assert tr.points_since(105.0, 110.0) == [[105.0, 0.3]]
    tr.add_vectors([_fv(100.0 + 5 * i, 0.5) for i in range(2, 100)])
    assert len(tr.points) == 13  # 60 s / 5 s + 1: bounded however long it runs
    tr.add_events([Event("anomaly_raised", "s", 200.0, "warning", {"score": 0.9}),
                   Event("anomaly_cleared", "s", 230.0),
                   Event("anomaly_raised", "s", 250.0, "warning",
                         {"score": float("inf"), "diagnosis": "outer race"})])
    assert tr.alarms_since(0) == [{"start": 200.0, "end": 230.0}, {"start": 250.0, "end": None}]
    assert tr.alarms_since(240.0) == [{"start": 250.0, "end": None}]
    assert tr.alerts[-1]["details"] == {"score": None, "diagnosis": "outer race"}
    tr.add_events([Event("model_loaded", "s", 260.0)])  # a new model: the alarm ends
    assert tr.alarms_since(0)[-1] == {"start": 250.0, "end": 260.0}


def test_progress_buffer_stall_and_known_disconnected_driver() -> None:
    p = Progress(stall_after=5.0)
    d = DriverView("d", True, 100.0, 10, 1.0)
    assert p.observe(100.0, commits=1, writer_alive=True, waiting=0, drivers=[d]).ok
    d2 = DriverView("d", True, 106.0, 20, 1.0)
    # nothing waits for the writer (e.g. waveforms no pipeline takes): no commit is fine
    assert p.observe(106.5, commits=1, writer_alive=True, waiting=0, drivers=[d2]).ok
    # records wait, but no commit for > 5 s: the writer is stuck
    v = p.observe(106.5, commits=1, writer_alive=True, waiting=7, drivers=[d2])
    assert not v.ok and v.reasons == ("buffer: no commit for 6.5 s with 7 records waiting",)
    assert p.observe(107.0, commits=2, writer_alive=True, waiting=7, drivers=[d2]).ok
    gone = DriverView("d", False, 50.0, 20, 1.0)  # silent, but known disconnected
    assert p.observe(108.0, commits=3, writer_alive=True, waiting=0, drivers=[gone]).ok
    silent = DriverView("d", True, 50.0, 20, 1.0)  # connected and silent for 58 s
    v = p.observe(108.0, commits=3, writer_alive=True, waiting=0, drivers=[silent])
    assert not v.ok and v.reasons[0].startswith("driver d: connected but nothing delivered")
    assert not p.observe(108.0, commits=3, writer_alive=False, waiting=0, drivers=[gone]).ok
