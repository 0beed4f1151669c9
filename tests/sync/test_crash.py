"""Crash campaign: SIGKILL the agent at random moments while it ingests and syncs; in the end
every reading it acknowledged is at the receiver exactly once and nothing is left behind."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.records import format_us
from tests.receiver import IngestReceiver

from .conftest import API_KEY

REPO = Path(__file__).resolve().parents[2]
ChildCmd = Callable[[Path, str, bool], list[str]]


def python_child(db: Path, url: str, drain: bool) -> list[str]:
    """The command under test (the lead may swap in ``edge-agent run`` with a config)."""
    cmd = [sys.executable, "-m", "tests.sync.crash_child", "--db", str(db), "--url", url,
           "--api-key", API_KEY]
    return cmd + (["--drain"] if drain else [])


class Child:
    def __init__(self, cmd: list[str]) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO, env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("ready"):
                self.ready.set()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(10)


def acked_keys(lines: list[str]) -> set[tuple[str, str]]:
    out = set()
    for line in lines:
        if line.startswith("ack "):
            _, first, n = line.split()
            for j in range(int(n)):
                out.add((format_us(int(first) + j), f"s{j % 5}"))
    return out


def table_rows(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("readings", "features", "events")}
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_campaign_exactly_once(tmp_path: Path, child_cmd: ChildCmd = python_child,
                                       kills: int = 22) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "1234")))
    db = tmp_path / "buffer.db"
    acked: set[tuple[str, str]] = set()
    t_start = time.monotonic()
    with IngestReceiver(api_key=API_KEY) as rx:
        for i in range(kills):
            # sprinkle receiver faults: lost answers, 5xx, resets, slow answers
            roll = rng.random()
            if roll < 0.25:
                rx.inject(store_then_drop=True, times=rng.randint(1, 3))
            elif roll < 0.4:
                rx.inject(status=503, retry_after=0.1)
            elif roll < 0.5:
                rx.inject(reset=True)
            elif roll < 0.6:
                rx.inject(delay=0.3)
            child = Child(child_cmd(db, rx.url, False))
            if i % 3 == 0:  # sometimes during start-up (open, migrate, integrity check)
                time.sleep(rng.uniform(0.05, 0.8))
            else:
                assert child.ready.wait(20), child.proc.stderr.read() if child.proc.stderr else ""
                time.sleep(rng.uniform(0.05, 1.2))
            child.kill()
            assert child.proc.returncode == -signal.SIGKILL, child.proc.stderr.read()  # type: ignore[union-attr]
            acked |= acked_keys(child.lines)
        rx.faults.clear()
        left_before_drain = table_rows(db)
        got_before_drain = len(rx.readings)
        drain = Child(child_cmd(db, rx.url, True))
        assert drain.proc.wait(90) == 0, drain.proc.stderr.read()  # type: ignore[union-attr]
        drain.reader.join(10)
        assert drain.lines[-1] == "drained 0", drain.lines
        elapsed = time.monotonic() - t_start
        # every acknowledged reading arrived, exactly once
        missing = acked - set(rx.readings)
        assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
        assert rx.conflicts == 0  # no row was ever sent again under another key
        assert rx.rows_stored == len(rx.readings) + len(rx.features) + len(rx.events)
        # what was committed but not yet acknowledged when killed is there too, nothing else
        for (ts, sensor), r in rx.readings.items():
            assert sensor in {f"s{k}" for k in range(5)} and r["value"] == float(
                int(r["value"])), (ts, r)
        assert table_rows(db) == {"readings": 0, "features": 0, "events": 0}
        assert not rx.errors
    print(f"\ncrash campaign: {kills} SIGKILLs, {len(acked)} acked, {len(rx.readings)} delivered,"
          f" {rx.duplicates} duplicate_ignored, {left_before_drain} left before drain "
          f"({got_before_drain} delivered before), {elapsed:.1f}s")
    assert len(rx.readings) >= len(acked) > 2_000  # the campaign really ingested (slow CI too)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_campaign_two_sinks_exactly_once_each(tmp_path: Path, kills: int = 12) -> None:
    """Two sinks over one buffer (the uploader, and ``mirror`` for events and readings to a
    second receiver), each with its own cursor and keys: after random SIGKILLs and a drain,
    each receiver has every acknowledged reading exactly once, and the buffer is empty."""
    rng = random.Random(int(os.environ.get("CRASH_SEED", "4321")))
    db = tmp_path / "buffer.db"
    acked: set[tuple[str, str]] = set()
    with IngestReceiver(api_key=API_KEY) as rx, IngestReceiver(api_key=API_KEY) as mx:
        def cmd(drain: bool) -> list[str]:
            return [*python_child(db, rx.url, drain), "--mirror-url", mx.url]

        for i in range(kills):
            target = rx if i % 2 else mx
            roll = rng.random()
            if roll < 0.35:
                target.inject(store_then_drop=True, times=rng.randint(1, 3))
            elif roll < 0.55:
                target.inject(status=503, retry_after=0.1)
            elif roll < 0.7:
                target.inject(reset=True)
            child = Child(cmd(False))
            assert child.ready.wait(20), child.proc.stderr.read() if child.proc.stderr else ""
            time.sleep(rng.uniform(0.1, 1.2))
            child.kill()
            assert child.proc.returncode == -signal.SIGKILL, child.proc.stderr.read()  # type: ignore[union-attr]
            acked |= acked_keys(child.lines)
        rx.faults.clear()
        mx.faults.clear()
        drain = Child(cmd(True))
        assert drain.proc.wait(90) == 0, drain.proc.stderr.read()  # type: ignore[union-attr]
        drain.reader.join(10)
        assert drain.lines[-1] == "drained 0", drain.lines
        for r in (rx, mx):
            missing = acked - set(r.readings)
            assert not missing, f"{len(missing)} acknowledged readings lost at {r.url}"
            assert r.conflicts == 0  # no row was ever sent again under another key
            assert r.rows_stored == len(r.readings) + len(r.features) + len(r.events)
            assert not r.errors
        assert set(mx.readings) == set(rx.readings)  # the same rows, delivered independently
        assert {q.idempotency_key.split(":")[0] for q in mx.requests
                if q.idempotency_key} == {"crash-gw-m"}
        assert table_rows(db) == {"readings": 0, "features": 0, "events": 0}
    assert len(acked) > 1_000
