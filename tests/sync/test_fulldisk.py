"""A full disk must not wedge the agent: tested on a real 6 MiB file system (a tmpfs).

The buffer's ``max_size`` (64 MiB) is larger than the file system, the receiver is down and a
writer keeps putting readings: the free-space-aware quota keeps the database inside what the
disk allows (dropping, counted). Then another file takes every free byte, and a big event needs
room the disk no longer has (SQLITE_FULL): the ballast is given up and the write goes through.
The receiver comes back: the whole backlog is delivered (every committed reading either arrives
exactly once or was counted as dropped), the writer goes on; once space returns the ballast is
back. Finally a real ``edge-agent run`` on a full disk is stopped with SIGTERM and must exit
within its ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.records import Event, Reading
from edge_agent.sync.buffer import Buffer, BufferConfig
from tests.drivers.typed import num
from tests.receiver import IngestReceiver

from .conftest import API_KEY, T0, Running, fast_uploader_cfg

FS_SIZE = 6 * 1024**2
SENSORS = 5


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs mounted for this test (needs root or CAP_SYS_ADMIN), always unmounted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a 6 MiB tmpfs for the full-disk test (run the tests as root "
                    f"or with CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> int:
    """Another process takes every free byte of the file system: returns the bytes written."""
    n = 0
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 512):
            block = os.urandom(size)
            while True:
                try:
                    n += f.write(block)
                except OSError:
                    break
    return n


def avail(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Writer:
    """A simulator-like producer: puts of 500 noisy readings, acknowledged ones recorded."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.acked: set[tuple[str, int]] = set()
        self.failed = 0
        self.i = 0
        self.rng = random.Random(7)

    async def put_one(self) -> None:
        recs = []
        for _ in range(500):
            us = int((T0 + self.i * 0.001) * 1e6)
            recs.append(Reading(f"s{self.i % SENSORS}", "vibration", self.rng.gauss(0, 1), "g",
                                us / 1e6))
            self.i += 1
        await self.buffer.put(recs)
        self.acked.update((r.sensor_id, round(r.timestamp * 1e6)) for r in recs)

    async def run_for(self, seconds: float, pause: float = 0.002) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.put_one()
            await asyncio.sleep(pause)


def us_of(ts: str) -> int:
    from datetime import datetime
    return round(datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() * 1e6)


async def test_full_disk_keeps_delivering(small_fs: Path) -> None:
    cfg = BufferConfig(path="buffer.db", max_size=64 * 1024**2,
                       reserved_for_events=1024**2,
                       housekeeping_interval=0.2)
    buf = Buffer(small_fs / "buffer.db", cfg)
    await buf.start()
    assert (small_fs / "buffer.db.ballast").exists()
    w = Writer(buf)
    with IngestReceiver(api_key=API_KEY) as rx:
        rx.down()
        up_cfg = fast_uploader_cfg(rx.url, batch_max_rows=2000, backoff_max=0.3)
        try:
            async with Running(buf, up_cfg) as up:
                # 1. receiver down, max_size > disk: the disk-aware quota holds, drops counted
                for _ in range(60):
                    await w.run_for(0.5)
                    if buf.stats()["dropped_total"]:
                        break
                await w.run_for(1.0)
                st = buf.stats()
                assert int(st["disk_limit"]) < FS_SIZE  # type: ignore[call-overload]
                assert int(st["dropped_total"]) > 0, st  # type: ignore[call-overload]
                # 2. another file takes all free space; a big event needs room: SQLITE_FULL
                filler = small_fs / "other-process.log"
                fill(filler)
                await w.run_for(1.0)
                await asyncio.wait_for(buf.put([Event(
                    "operator_note", "test", time.time(), "info",
                    {"blob": os.urandom(75_000).hex()})]), 30)
                fill(filler)
                await w.run_for(1.0)
                st = buf.stats()
                assert num(st, "disk_errors") > 0 and st["ballast_released"], st
                # 3. the receiver comes back on a full disk: the backlog drains, writes go on
                rx.up()
                await w.run_for(2.0, pause=0.05)
                assert await up.wait_until(
                    lambda u: buf.stats()["rows_queued_total"] == 0, 30), buf.stats()
                n_before = len(w.acked)
                await w.run_for(0.5)
                assert len(w.acked) > n_before
                assert await up.wait_until(
                    lambda u: buf.stats()["rows_queued_total"] == 0, 30), buf.stats()
                # 4. space returns: the ballast is back
                filler.unlink()
                for _ in range(50):
                    if (small_fs / "buffer.db.ballast").exists():
                        break
                    await asyncio.sleep(0.1)
                assert (small_fs / "buffer.db.ballast").exists()
        finally:
            await buf.close()
        got = Counter((s, us_of(t)) for t, s in rx.readings)
        dropped = buf.stats()["dropped_by_sensor"]
    assert rx.duplicates == 0 and rx.conflicts == 0
    assert set(got) <= w.acked and all(v == 1 for v in got.values())
    per_sensor = Counter(s for s, _ in w.acked)
    recv = Counter(s for s, _ in got)
    assert isinstance(dropped, dict)
    for s, n in per_sensor.items():
        assert recv[s] + dropped.get(s, 0) == n, (s, n, recv[s], dropped)
    assert any(e["kind"] == "operator_note" for e in rx.events.values())


AGENT_CONFIG = """
[agent]
gateway_id = "full-disk-gw"
state_dir = "{state}"
shutdown_timeout = "{timeout}s"

[buffer]
max_size = "64MiB"
reserved_for_events = "1MiB"

[uploader]
url = "{url}"
api_key = "{key}"
interval = "100ms"
backoff_initial = "100ms"
backoff_max = "500ms"

[[drivers]]
kind = "simulator"
name = "sim"
asset = "pump-01"
block = "100ms"
pace = "fast"
microphone = false
"""


def test_sigterm_on_full_disk_stops_in_time(small_fs: Path, tmp_path: Path) -> None:
    timeout = 4.0
    with IngestReceiver(api_key=API_KEY) as rx:
        rx.down()  # nothing drains: the disk stays full
        cfg = tmp_path / "agent.toml"
        cfg.write_text(AGENT_CONFIG.format(state=small_fs, timeout=timeout, url=rx.url,
                                           key=API_KEY))
        exe = Path(sys.executable).with_name("edge-agent")
        proc = subprocess.Popen([str(exe), "run", "-c", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while (not (small_fs / "buffer.db").exists() and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            time.sleep(1.0)
            fill(small_fs / "other-process.log")
            time.sleep(3.0)
            assert avail(small_fs) < 1024**2
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=timeout + 10)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"SIGTERM on a full disk: exited in {took:.2f} s (shutdown_timeout {timeout} s)")
    assert proc.returncode == 0, err[-3000:]
    assert took < timeout, took
