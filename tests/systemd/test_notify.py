"""sd_notify over a real Unix datagram socket, as systemd's $NOTIFY_SOCKET."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge_agent.agent.notify import Notifier, Watchdog, watchdog_interval


@pytest.fixture
def sock(tmp_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(2)
    return s


def recv_all(s: socket.socket) -> list[str]:
    out = []
    s.settimeout(0.05)
    try:
        while True:
            out.append(s.recv(4096).decode())
    except (TimeoutError, BlockingIOError):
        return out


def test_ready_status_stopping(sock: socket.socket, tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "notify"))
    assert n.enabled
    n.ready("2 sources, 0 alarms")
    n.status("line\nbreak")
    n.stopping()
    msgs = recv_all(sock)
    assert msgs == ["READY=1\nSTATUS=2 sources, 0 alarms", "STATUS=line break", "STOPPING=1"]


def test_abstract_namespace() -> None:
    name = f"edge-agent-test-{id(object())}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    n = Notifier("@" + name)
    assert n.ready()
    assert recv_all(s) == ["READY=1"]


def test_without_socket_everything_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready() and n.sent == 0


def test_watchdog_pings_only_while_progressing(sock: socket.socket, tmp_path: Path) -> None:
    state = {"ok": True}
    wd = Watchdog(Notifier(str(tmp_path / "notify")),
                  lambda: (state["ok"], "" if state["ok"] else "driver sim silent for 9 s"),
                  interval=0.01, status=lambda: "1 source")
    assert wd.tick()
    state["ok"] = False
    assert not wd.tick() and not wd.tick()
    state["ok"] = True
    assert wd.tick()
    msgs = recv_all(sock)
    assert msgs == ["WATCHDOG=1\nSTATUS=1 source"] * 2
    assert wd.pings == 2 and wd.withheld == 2


def test_watchdog_interval_from_environment() -> None:
    import os
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000",
                              "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
