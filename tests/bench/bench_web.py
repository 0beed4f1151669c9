"""Web benchmark: CPU the agent spends serving the status page's API to 20 clients polling every
second (goal: <= 5 % of one core).

`edge-agent run` runs as a child process on the simulated pump (real time, both pipelines with
their models); its CPU time is read from /proc. Phases alternate — no clients, then 20 clients
each fetching /api/status and both sources' /scores?since= every second, as the page does —
and the cost of the web is the difference of the mean CPU use of the two kinds of phase.

    .venv/bin/python tests/bench/bench_web.py [--clients 20] [--phase 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

CONFIG = """
[agent]
gateway_id = "bench-web"
state_dir = "{state}"
[web]
listen = "127.0.0.1:0"
[[drivers]]
kind = "simulator"
name = "sim"
asset = "pump-01"
fault = {{ kind = "outer_race", onset = "20s", growth = "30s" }}
[[pipelines]]
source = "pump-01.de_accel"
features = {{ kind = "vibration" }}
model = {{ path = "builtin:vibration_simulator" }}
[[pipelines]]
source = "pump-01.mic"
window = 8192
hop = 4096
features = {{ kind = "sound" }}
model = {{ path = "builtin:sound_simulator" }}
"""

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def client(url: str, stop: threading.Event, counts: list[int]) -> None:
    since: dict[str, float] = {}
    while not stop.is_set():
        t0 = time.monotonic()
        snap = get(f"{url}/api/status")
        for s in snap["sources"]:
            r = get(f"{url}/api/sources/{s['id']}/scores?since={since.get(s['id'], 0.0)}")
            if r["points"]:
                since[s["id"]] = r["points"][-1][0]
        counts[0] += 1 + len(snap["sources"])
        stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))


def phase(pid: int, seconds: float) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--phase", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "agent.toml"
        cfg.write_text(CONFIG.format(state=Path(tmp) / "state"))
        exe = Path(sys.executable).with_name("edge-agent")
        proc = subprocess.Popen([str(exe), "run", "-c", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            url_file = Path(tmp) / "state" / "web-url"
            while not url_file.is_file():
                assert proc.poll() is None, "the agent exited"
                time.sleep(0.2)
            url = url_file.read_text().strip()
            time.sleep(5.0)  # models loaded, steady state
            idle: list[float] = []
            busy: list[float] = []
            requests = [0]
            for _ in range(a.rounds):
                idle.append(phase(proc.pid, a.phase))
                stop = threading.Event()
                threads = [threading.Thread(target=client, args=(url, stop, requests))
                           for _ in range(a.clients)]
                for t in threads:
                    t.start()
                n0 = requests[0]
                busy.append(phase(proc.pid, a.phase))
                stop.set()
                for t in threads:
                    t.join()
                rate = (requests[0] - n0) / a.phase
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    mi, mb = sum(idle) / len(idle), sum(busy) / len(busy)
    print(f"agent CPU without clients: {100 * mi:.1f} % of one core "
          f"(phases: {', '.join(f'{100 * x:.1f}' for x in idle)})")
    print(f"agent CPU with {a.clients} clients polling every second "
          f"(~{rate:.0f} requests/s): {100 * mb:.1f} % "
          f"(phases: {', '.join(f'{100 * x:.1f}' for x in busy)})")
    print(f"cost of serving the page's API: {100 * (mb - mi):.1f} % of one core "
          f"(goal <= 5 %)")


if __name__ == "__main__":
    main()
