"""The agent as systemd runs it: a subprocess whose ``$NOTIFY_SOCKET`` is a datagram socket here.

* READY=1 arrives once it runs; WATCHDOG=1 (``$WATCHDOG_USEC`` = 2 s → a ping a second) while
  data flows, none while the buffer writer is blocked for real (another process holds SQLite's
  write lock on the buffer: nothing commits while readings wait, the /healthz verdict turns
  "stalled"), and again once the lock is released; STOPPING=1 at SIGTERM and a clean exit.
* The same with a frozen PLC: a real Modbus server behind a relay that stops passing bytes
  without closing anything (a switched-off panel): the driver stays connected, its read waits
  for its 20 s timeout and delivers nothing — no pings until the relay passes bytes again.
* SIGHUP with a good file: RELOADING=1/READY=1, the new threshold scores the next windows, the
  changed driver restarts, the unchanged one keeps its connection and counters, every reading
  stays buffered; with a bad file: refused with each problem logged and an event, the agent
  goes on with the running configuration. A changed ``[uploader]`` restarts the uploader: every
  reading reaches a contract receiver once, an unbroken series across the restart.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.records import parse_ts
from edge_agent.sync.pack import per_source
from tests.conftest import free_port
from tests.drivers.modbus_server import MbServer, plant_map
from tests.drivers.proxy import FreezableProxy
from tests.receiver import IngestReceiver


class NotifySocket:
    """systemd's side of $NOTIFY_SOCKET: every datagram, with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def since(self, t: float, line: str) -> list[str]:
        """Notifications since ``t`` with ``line`` as one of their lines."""
        with self._lock:
            return [m for at, m in self.messages if at >= t and line in m.split("\n")]

    def wait(self, pred: Callable[[str], bool], after: float, within: float) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with self._lock:
                hit = [m for at, m in self.messages if at >= after and pred(m)]
            if hit:
                return hit[0]
            time.sleep(0.05)
        raise AssertionError(f"no matching notification within {within} s: {self.messages}")

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def has(line: str) -> Callable[[str], bool]:
    return lambda m: line in m.split("\n")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(tmp_path / "notify")
    yield s
    s.close()


class Agent:
    def __init__(self, tmp_path: Path, config: Path, notify: NotifySocket) -> None:
        exe = Path(sys.executable).with_name("edge-agent")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_agent.agent.cli"]
        self.out = tmp_path / "agent.log"
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
        env.pop("WATCHDOG_PID", None)
        with self.out.open("wb") as f:
            self.proc = subprocess.Popen([*cmd, "run", "-c", str(config)], stdout=f,
                                         stderr=subprocess.STDOUT, env=env)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.out.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


SIM = """
[[drivers]]
kind = "simulator"
name = "{name}"
asset = "{asset}"
seed = {seed}
block = "0.25s"
microphone = false
"""


def config(tmp_path: Path, port: int, body: str) -> str:
    return f"""
[agent]
gateway_id = "notify-test"
state_dir = "{tmp_path / 'state'}"
shutdown_timeout = "10s"
[web]
listen = "127.0.0.1:{port}"
stall_after = "2s"
{body}
"""


def test_ready_watchdog_only_while_progressing_and_stopping(tmp_path: Path,
                                                            notify: NotifySocket) -> None:
    port = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config(tmp_path, port, SIM.format(name="sim", asset="pump-01", seed=1)))
    t0 = time.monotonic()
    agent = Agent(tmp_path, cfg, notify)
    try:
        ready = notify.wait(has("READY=1"), t0, 30)
        assert "STATUS=drivers " in ready
        t_ready = time.monotonic()
        time.sleep(3.5)
        assert len(notify.since(t_ready, "WATCHDOG=1")) >= 2  # a ping a second while it runs
        assert get(port, "/healthz")[0] == 200

        # Another process takes SQLite's write lock on the buffer: the writer cannot commit.
        db = sqlite3.connect(tmp_path / "state" / "buffer.db", isolation_level=None, timeout=30)
        db.execute("BEGIN IMMEDIATE")
        t_lock = time.monotonic()
        time.sleep(7.0)
        code, verdict = get(port, "/healthz")
        assert code == 503 and "no commit" in " ".join(verdict["reasons"]), verdict
        # stall_after (2 s) + one ping interval (1 s): no ping later than that.
        assert notify.since(t_lock + 3.5, "WATCHDOG=1") == []
        db.execute("ROLLBACK")
        db.close()
        t_free = time.monotonic()
        notify.wait(has("WATCHDOG=1"), t_free, 25)  # progressing again: pings resume
        assert agent.proc.poll() is None

        t_term = time.monotonic()
        assert agent.stop() == 0
        notify.wait(has("STOPPING=1"), t_term, 1)
    finally:
        agent.stop()
    msgs = [m["msg"] for m in agent.logs()]
    assert "pipeline stalled; withholding watchdog pings" in msgs
    assert "pipeline progressing again; watchdog pings resumed" in msgs


class FrozenPlc:
    """A pymodbus server and a :class:`FreezableProxy` in front of it, on their own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = MbServer(plant_map(), port=free_port())
        self.proxy: FreezableProxy | None = None
        self._call(self.server.start())
        self.proxy = FreezableProxy(self.server.port)
        self._call(self.proxy.start())

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @property
    def port(self) -> int:
        assert self.proxy is not None
        return self.proxy.port

    def freeze(self, frozen: bool) -> None:
        assert self.proxy is not None
        self.loop.call_soon_threadsafe(self.proxy.freeze if frozen else self.proxy.thaw)

    def close(self) -> None:
        if self.proxy is not None:
            self._call(self.proxy.stop())
        self._call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_watchdog_withheld_while_a_plc_is_frozen(tmp_path: Path, notify: NotifySocket) -> None:
    plc = FrozenPlc()
    port = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config(tmp_path, port, f"""
[[drivers]]
kind = "modbus"
name = "mb"
host = "127.0.0.1"
port = {plc.port}
poll_interval = "0.5s"
timeout = "20s"
retries = 0
devices = [{{ name = "plc", points = [
    {{ sensor_id = "temp", table = "input", address = 0, data_type = "int16" }}] }}]
"""))
    t0 = time.monotonic()
    agent = Agent(tmp_path, cfg, notify)
    try:
        notify.wait(has("READY=1"), t0, 30)
        t_ready = time.monotonic()
        time.sleep(3.5)
        assert len(notify.since(t_ready, "WATCHDOG=1")) >= 2
        plc.freeze(True)
        t_freeze = time.monotonic()
        time.sleep(7.0)
        code, verdict = get(port, "/healthz")
        assert code == 503 and "driver mb: connected but nothing delivered" in \
            " ".join(verdict["reasons"]), verdict
        # Up to a poll (0.5 s) + stall_after (2 s) + a ping interval (1 s): then no more.
        assert notify.since(t_freeze + 4.0, "WATCHDOG=1") == []
        plc.freeze(False)
        notify.wait(has("WATCHDOG=1"), time.monotonic(), 10)
        assert agent.stop() == 0
    finally:
        agent.stop()
        plc.close()


PIPE = """
[[pipelines]]
source = "pump-01.de_accel"
features = {{ kind = "vibration" }}
model = {{ path = "{model}" }}
threshold = {threshold}
"""


def events(db: sqlite3.Connection) -> list[tuple[int, dict[str, Any]]]:
    return [(ts, json.loads(b)) for ts, b in db.execute("SELECT ts, body FROM events ORDER BY id")]


def pump_readings(db: sqlite3.Connection) -> int:
    ids = {i for i, s in db.execute("SELECT id, sensor_id FROM sources")
           if s.startswith("pump-01.")}
    n = 0
    for srcs, idx, k in db.execute("SELECT srcs, idx, n FROM readings"):
        n += sum(c for i, c in per_source(srcs, idx, k).items() if i in ids)
    return n


def driver(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in status["drivers"] if d["name"] == name)


def test_sighup_reload_good_then_bad(tmp_path: Path, notify: NotifySocket) -> None:
    port = free_port()
    cfg = tmp_path / "agent.toml"

    def write(threshold: str, seed2: int, extra: str = "", web: int = port,
              model: str = "builtin:vibration_simulator") -> None:
        cfg.write_text(config(tmp_path, web, SIM.format(name="sim", asset="pump-01", seed=1)
                              + SIM.format(name="sim2", asset="fan-02", seed=seed2) + extra
                              + PIPE.format(threshold=threshold, model=model)))

    write("-1e9", 1)  # every window anomalous
    t0 = time.monotonic()
    agent = Agent(tmp_path, cfg, notify)
    try:
        notify.wait(has("READY=1"), t0, 30)
        time.sleep(3)
        before = driver(get(port, "/api/status")[1], "sim")
        assert before["connected"] and before["reads"] > 0

        # No window anomalous; sim2 changed, sim not; a new web port needs a restart (the
        # page stays on the old one meanwhile).
        write("1e9", 2, web=free_port())
        t_hup = time.monotonic()
        agent.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait(has("RELOADING=1"), t_hup, 10)
        assert "MONOTONIC_USEC=" in reloading
        notify.wait(has("READY=1"), t_hup, 10)
        time.sleep(3)
        after = driver(get(port, "/api/status")[1], "sim")
        # The same driver object: its counters went on (a new one would restart from 0).
        assert after["reads"] >= before["reads"] + 6 and after["connected"]

        # Refused: a file that does not parse (two problems), then one naming a missing model.
        for bad in (lambda: write('"high"', 2, extra='[queues]\nreadings = { size = -1 }\n'),
                    lambda: write("0.5", 2, model=str(tmp_path / "no-such-bundle"))):
            bad()
            t_bad = time.monotonic()
            agent.proc.send_signal(signal.SIGHUP)
            notify.wait(has("RELOADING=1"), t_bad, 10)
            notify.wait(has("READY=1"), t_bad, 10)
        time.sleep(2)
        assert agent.proc.poll() is None
        assert notify.since(t_bad + 1, "WATCHDOG=1")  # still running, still progressing
        last = driver(get(port, "/api/status")[1], "sim")
        t_term = time.monotonic()
        assert agent.stop() == 0
        notify.wait(has("STOPPING=1"), t_term, 1)
    finally:
        agent.stop()

    db = sqlite3.connect(tmp_path / "state" / "buffer.db")
    evs = events(db)
    kinds = [e["kind"] for _, e in evs]
    reloaded = [(ts, e) for ts, e in evs if e["kind"] == "config_reloaded"]
    assert len(reloaded) == 1
    t_reload, rel = reloaded[0]
    assert rel["details"]["drivers"] == {"restarted": ["sim2"], "stopped": [], "started": []}
    assert rel["details"]["pipelines"]["rebuilt"] == ["pump-01.de_accel"]
    assert rel["details"]["needs_restart"] == ["web.listen"] and rel["severity"] == "warning"
    refused = [e["details"]["problems"] for _, e in evs if e["kind"] == "config_reload_refused"]
    assert len(refused) == 2, refused
    assert any(p.startswith("pipelines[0].threshold:") for p in refused[0]), refused
    assert any(p.startswith("queues.readings.size:") for p in refused[0]), refused
    assert [p.split(":")[0] for p in refused[1]] == ["pipelines[0].model.path"], refused
    # The unchanged driver was never disconnected nor reconnected.
    assert not [e for _, e in evs if e["kind"].startswith("driver_")
                and e["source_id"] == "sim"], evs
    thresholds = [e["details"]["threshold"] for _, e in evs if e["kind"] == "model_loaded"]
    assert thresholds == [-1e9, 1e9]
    feats = [(ts, json.loads(b)) for ts, b in db.execute(
        "SELECT ts, body FROM features ORDER BY ts")]
    pump = [(ts, f["is_anomaly"]) for ts, f in feats if f["source_id"] == "pump-01.de_accel"]
    early = [a for ts, a in pump if ts < t_reload - 1_000_000]
    late = [a for ts, a in pump if ts > t_reload + 1_000_000]
    assert len(early) > 20 and all(early)
    assert len(late) > 20 and not any(late)  # the new threshold, kept through the bad reload
    # Every reading of the unchanged driver is buffered (4 process values per block read).
    assert pump_readings(db) >= 4 * last["reads"]
    db.close()
    logs = agent.logs()
    problem_logs = [x["problem"] for x in logs if x["msg"] == "configuration reload refused"]
    assert len(problem_logs) == 3, problem_logs
    assert [x["needs_restart"] for x in logs
            if x["msg"] == "configuration changes that need a restart"] == [["web.listen"]]
    assert "agent_stopped" in kinds


def test_sighup_restarts_a_changed_uploader_without_losing_a_row(tmp_path: Path,
                                                                notify: NotifySocket) -> None:
    port = free_port()
    cfg = tmp_path / "agent.toml"
    key = tmp_path / "api-key"
    key.write_text("reload-secret-key\n")

    def write(rows: int) -> None:
        cfg.write_text(config(tmp_path, port, SIM.format(name="sim", asset="pump-01", seed=1))
                       + f"""
[uploader]
url = "{{url}}"
api_key_file = "{key}"
interval = "200ms"
batch_max_rows = {rows}
""".replace("{url}", rx.url))

    with IngestReceiver(api_key="reload-secret-key") as rx:
        write(100)
        t0 = time.monotonic()
        agent = Agent(tmp_path, cfg, notify)
        try:
            notify.wait(has("READY=1"), t0, 30)
            assert rx.wait_for(lambda r: len(r.readings) > 20, 10)
            write(30)
            t_hup = time.monotonic()
            agent.proc.send_signal(signal.SIGHUP)
            notify.wait(has("READY=1"), t_hup, 10)
            time.sleep(3)
            assert agent.stop() == 0
        finally:
            agent.stop()
        assert rx.conflicts == 0 and not rx.errors
        events = list(rx.events.values())
        series: dict[str, list[float]] = {}
        readings = list(rx.readings)
    reloaded = [e for e in events if e["kind"] == "config_reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["details"]["uploader"] == "restarted"
    assert reloaded[0]["details"]["drivers"]["restarted"] == []
    # Every reading arrived once, an unbroken series per sensor across the restart.
    for ts, sensor in readings:
        series.setdefault(sensor, []).append(parse_ts(ts))
    assert len(series) == 4 and len({len(v) for v in series.values()}) == 1
    for stamps in series.values():
        t = sorted(stamps)
        assert {round(b - a, 6) for a, b in itertools.pairwise(t)} == {0.25}
    db = sqlite3.connect(tmp_path / "state" / "buffer.db")
    assert db.execute("SELECT coalesce(sum(n), 0) FROM readings").fetchone()[0] == 0
    db.close()
