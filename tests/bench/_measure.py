"""What the benchmark scripts measure about their own process (imported as ``_measure``)."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping


def rss_mib() -> float:
    """Resident set size of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s() -> float:
    """User + system CPU seconds used by this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def best(fns: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, float]]:
    """(min wall, min CPU) seconds per function; rounds interleave the functions so a busy
    machine (other processes) disturbs them alike. Each function is called once to warm up."""
    for fn in fns.values():
        fn()
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - t)
            cpus[name].append(time.process_time() - c)
    return {k: (min(walls[k]), min(cpus[k])) for k in fns}


def start_server_child(script: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    """Run ``script --serve PORT *args`` in a child process (so the server's CPU is not
    counted) on a free loopback port; return once it prints READY."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    child = subprocess.Popen([sys.executable, script, "--serve", str(port), *args],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip() == "READY", line
    return child, port


def collect(child: subprocess.Popen[str], prefix: str) -> list[float]:
    """The numbers a server child prints on ``prefix`` lines (``"TICK 1.5"``), gathered by a
    daemon thread into the returned list as they come."""
    got: list[float] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(prefix + " "):
                got.append(float(line.split()[1]))

    threading.Thread(target=read, daemon=True).start()
    return got


def readme_block(name: str, text: str) -> None:
    """Replace what README.md holds between ``<!-- name -->`` and ``<!-- /name -->`` with
    ``text`` (a benchmark's figures, as it printed them: never typed by hand)."""
    from pathlib import Path

    readme = Path(__file__).resolve().parents[2] / "README.md"
    doc = readme.read_text(encoding="utf-8")
    begin, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
    a, b = doc.find(begin), doc.find(end)
    if a < 0 or b < a:
        raise SystemExit(f"README.md has no {begin.strip()} ... {end} block")
    readme.write_text(doc[:a + len(begin)] + text.rstrip("\n") + "\n" + doc[b:], encoding="utf-8")
    print(f"README.md: {name} figures replaced")
