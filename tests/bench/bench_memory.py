"""Memory of the default configuration (what ``make run`` runs: the embedded simulated plant,
the shipped models, the status page on), with the issue's goal (<= 90 MB peak RSS).

1. The figure: a real ``edge-agent run --state-dir <tmp>`` (the console script, as ``make run``
   starts it) sampled every 0.25 s for ``--seconds`` (default 90: the simulated fault starts at
   60 s, so the alert and diagnosis path is included); prints the peak (VmHWM), RSS at a few
   points, anonymous vs file-backed pages and the threads. When 127.0.0.1:8080 (the default
   ``[web].listen``) is taken, the same configuration runs with port 0 and the line says so.
   ``--unit-env`` runs it a second time with the ``Environment=`` of the systemd unit
   (``systemd/edge-agent.service``: its glibc malloc thresholds keep freed memory).
2. The breakdown, in a fresh interpreter: RSS added by each top-level package in the order the
   agent imports them, by the two onnxruntime sessions of the shipped models, and by SQLite
   (the buffer started, then 10,000 rows written: its page cache fills with what is written).

    .venv/bin/python tests/bench/bench_memory.py [--seconds 90] [--unit-env] [--no-breakdown]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from _measure import rss_mib  # tests/bench/_measure.py

if TYPE_CHECKING:
    from edge_agent.sync.buffer import BufferConfig

ROOT = Path(__file__).resolve().parents[2]
AGENT = str(Path(sys.executable).with_name("edge-agent"))
GOAL_MIB = 90.0
# The default config before this work (branch point 9ace83c, same machine, this script): peak
# RSS over 90 s.
BEFORE_MIB = 179.1
DEFAULT_LISTEN = ("127.0.0.1", 8080)

# Import order of `edge-agent run` (what pulls what first), one step per top-level package;
# "edge_agent (rest)" is everything else the default run imports (its own modules, stdlib).
IMPORT_STEPS: list[tuple[str, list[str]]] = [
    ("numpy", ["numpy"]),
    ("pydantic (+ model machinery)", ["pydantic", "pydantic.main", "pydantic.fields"]),
    ("onnxruntime", ["onnxruntime"]),
    ("aiohttp", ["aiohttp", "aiohttp.web"]),
    ("prometheus_client", ["prometheus_client"]),
    ("edge_agent (rest)", ["edge_agent.agent.cli", "edge_agent.agent.daemon",
                           "edge_agent.agent.web", "edge_agent.drivers.simulator",
                           "edge_agent.models.chain"]),
]


def status_mib(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                v = int(rest.split()[0])
                out[key] = v if key == "Threads" else v / 1024
    return out


def port_free(addr: tuple[str, int]) -> bool:
    with socket.socket() as s:
        try:
            s.bind(addr)
        except OSError:
            return False
    return True


def unit_env() -> dict[str, str]:
    """``Environment=`` assignments of the shipped systemd unit."""
    env: dict[str, str] = {}
    for line in (ROOT / "systemd" / "edge-agent.service").read_text().splitlines():
        if line.startswith("Environment="):
            for item in line.removeprefix("Environment=").split():
                key, _, value = item.partition("=")
                env[key] = value
    return env


def run_default(seconds: float, extra_env: dict[str, str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [AGENT, "run", "--state-dir", str(Path(tmp) / "state")]
        how = "edge-agent run --state-dir <tmp> (embedded default config)"
        if not port_free(DEFAULT_LISTEN):
            cfg = Path(tmp) / "default-port0.toml"
            text = (ROOT / "agent" / "default.toml").read_text(encoding="utf-8")
            cfg.write_text('[web]\nlisten = "127.0.0.1:0"\n\n' + text, encoding="utf-8")
            cmd += ["-c", str(cfg)]
            how = "embedded default config with [web].listen port 0 (8080 is taken)"
        if extra_env:
            how += " under the systemd unit's Environment= (" + " ".join(
                f"{k}={v}" for k, v in extra_env.items() if k.startswith("MALLOC")) + ")"
        agent = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL,
                                 env={**os.environ, **(extra_env or {})})
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        try:
            while (t := time.monotonic() - t0) < seconds:
                if agent.poll() is not None:
                    raise SystemExit(f"the agent exited early (code {agent.returncode})")
                samples.append((t, status_mib(agent.pid)["VmRSS"]))
                time.sleep(0.25)
            end = status_mib(agent.pid)
        finally:
            agent.terminate()
            agent.wait(30)

    def at(s: float) -> float:
        return max((r for t, r in samples if t <= s), default=float("nan"))

    verdict = "meets" if end["VmHWM"] <= GOAL_MIB else "misses"
    print(f"default config: {how}, {seconds:g} s (fault onset at 60 s), "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"  peak RSS {end['VmHWM']:.1f} MB  (goal <= {GOAL_MIB:g} MB: {verdict}; "
          f"before: {BEFORE_MIB:g} MB)")
    marks = [m for m in (5, 30, 60, 90, 120, 300, 600) if m <= seconds]
    print("  RSS by time: " + ", ".join(f"<= {m} s {at(m):.1f} MB" for m in marks))
    print(f"  at the end: anonymous {end['RssAnon']:.1f} MB, file-backed (code of shared "
          f"libraries) {end['RssFile']:.1f} MB, {end['Threads']:.0f} threads")


# -- breakdown (fresh interpreter) --------------------------------------------------------------
# The child measures the bare interpreter before this script's own imports, then runs it.
BOOT = ("import runpy, sys\n"
        "bare = [int(x.split()[1]) / 1024 for x in open('/proc/self/status') "
        "if x.startswith('VmRSS:')][0]\n"
        "sys.argv = [{path!r}, '--breakdown-child', str(bare)]\n"
        "sys.path.insert(0, {path!r}.rsplit('/', 1)[0])\n"
        "runpy.run_path({path!r}, run_name='__main__')\n")


def breakdown(bare: float) -> None:
    """Runs in its own interpreter (``--breakdown-child``) so nothing is imported before."""
    base = rss_mib()
    print(f"breakdown (fresh interpreter): python itself {bare:.1f} MB; the standard library "
          f"the agent also uses (asyncio, argparse, subprocess, ...) +{base - bare:.1f} MB")
    floor = base
    for label, mods in IMPORT_STEPS:
        before, n0 = rss_mib(), len(sys.modules)
        for m in mods:
            importlib.import_module(m)
        print(f"  import {label:32} +{rss_mib() - before:5.1f} MB "
              f"({len(sys.modules) - n0} modules)")
        if not label.startswith("edge_agent"):
            floor += rss_mib() - before
    print(f"  imports total {rss_mib():.1f} MB, {len(sys.modules)} modules; not imported: "
          + ", ".join(sorted(m for m in ("scipy", "httpx", "asyncua", "pymodbus", "paho",
                                         "google.protobuf", "sklearn", "sounddevice")
                             if m not in sys.modules)))
    from edge_agent.agent import config
    from edge_agent.models.builtin import resolve_model
    from edge_agent.models.bundle import load_bundle
    from edge_agent.models.onnx_score import Scorer

    cfg = config.load(None)
    before = rss_mib()
    scorers = [Scorer.from_bundle(load_bundle(resolve_model(p.model.path)))
               for p in cfg.pipelines if p.model is not None]
    sessions = rss_mib() - before
    print(f"  onnxruntime sessions ({len(scorers)} shipped models)        +{sessions:5.1f} MB")
    print(f"  floor of the libraries the default config runs (python, numpy, pydantic, "
          f"onnxruntime + its sessions, aiohttp, prometheus_client): {floor + sessions:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(sqlite_part(cfg.buffer, Path(tmp)))
    print(f"  threads of the default run: main, buffer-writer, asyncio's default executor "
          f"(the web import runs there); here: {threading.active_count()}")


async def sqlite_part(buf_cfg: BufferConfig, tmp: Path) -> None:
    from edge_agent.records import Reading
    from edge_agent.sync.buffer import Buffer

    before = rss_mib()
    buffer = Buffer(tmp / "buffer.db", buf_cfg)
    await buffer.start()
    started = rss_mib()
    now = time.time()
    for i in range(10):
        await buffer.put([Reading("pump-01.temp", "temperature", 20.0 + j % 7, "degC",
                                  now + i * 100 + j * 0.1) for j in range(1000)])
    await asyncio.sleep(0.5)
    cache = await buffer.call(lambda st: st.conn.execute("PRAGMA cache_size").fetchone()[0])
    print(f"  SQLite buffer started (cache_size {cache} per connection)      "
          f"+{started - before:5.1f} MB, after 10,000 rows +{rss_mib() - started:5.1f} MB")
    await buffer.close(5.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--unit-env", action="store_true",
                    help="also run with the systemd unit's Environment=")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--breakdown-child", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.breakdown_child is not None:
        breakdown(a.breakdown_child)
        return
    run_default(a.seconds)
    if a.unit_env:
        run_default(a.seconds, unit_env())
    if not a.no_breakdown:
        here = Path(__file__).resolve()
        # cwd: not the repository root, whose edge_agent/ would shadow an installed package
        subprocess.run([sys.executable, "-c", BOOT.format(path=str(here))], check=True,
                       cwd=here.parent)


if __name__ == "__main__":
    main()
