"""Drain benchmark: a backlog of N readings to a loopback receiver (separate process); RSS of
the agent process sampled while it drains. Compresses at the shipped ``gzip_level`` unless
``--gzip-level`` says otherwise (the line printed names the level and whether it is shipped).

    .venv/bin/python tests/bench/bench_drain.py [--rows 1000000] [--batch-rows 5000]
                                                [--gzip-level N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _measure import readme_block, rss_mib  # tests/bench/_measure.py

from edge_agent.records import Reading
from edge_agent.settings import Secret
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.uploader import Uploader, UploaderConfig

REPO = Path(__file__).resolve().parents[2]



class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(0.5):  # a measurement cadence, not a work loop
            self.samples.append((time.monotonic() - t0, rss_mib()))


async def fill(buf: Buffer, n: int) -> float:
    t0 = time.time() - 86400
    t = time.perf_counter()
    per = 5000
    pending: list[asyncio.Task[None]] = []
    for i in range(0, n, per):
        chunk = [Reading(f"line3.press{j % 50:02d}.temp", "temperature", 20.0 + j * 0.01, "degC",
                         t0 + (i + j) * 1e-4) for j in range(min(per, n - i))]
        pending.append(asyncio.create_task(buf.put(chunk)))
        if len(pending) >= 4:
            await pending.pop(0)
    await asyncio.gather(*pending)
    return n / (time.perf_counter() - t)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-rows", type=int, default=5000)
    shipped = UploaderConfig().gzip_level
    ap.add_argument("--readme", action="store_true", help="also write README.md's figures")
    ap.add_argument("--gzip-level", type=int, default=shipped,
                    help=f"default: the shipped [uploader] gzip_level ({shipped})")
    args = ap.parse_args()
    rx = subprocess.Popen([sys.executable, "-m", "tests.receiver", "--port", "0", "--api-key",  # noqa: ASYNC220
                           "k", "--no-bodies"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert rx.stdout is not None
    url = rx.stdout.readline().split()[1]
    try:
        with tempfile.TemporaryDirectory(dir=".") as d:
            buf = Buffer(Path(d) / "b.db", BufferConfig(max_size=8 * 1024**3))
            await buf.start()
            rate_in = await fill(buf, args.rows)
            size = buf.stats()["bytes_queued"]
            print(f"backlog: {args.rows:,} readings ({int(size) / 1e6:.0f} MB in SQLite), "  # type: ignore[call-overload]
                  f"filled at {rate_in:,.0f}/s")
            cfg = UploaderConfig(url=url, api_key=Secret("k"), batch_max_rows=args.batch_rows,
                                 batch_max_bytes=64 * 1024**2, interval=0,
                                 gzip_level=args.gzip_level)
            up = Uploader(buf, cfg, "bench-gw")
            sampler = Sampler()
            sampler.start()
            r0 = rss_mib()
            t = time.perf_counter()
            await up.flush(3600)
            dt = time.perf_counter() - t
            sampler.stop.set()
            await buf.close()
        with urllib.request.urlopen(url + "/_admin/stats") as resp:  # noqa: ASYNC210
            st = json.loads(resp.read())
        print(f"drained {st['readings']:,} readings in {dt:.1f}s: {st['readings'] / dt:,.0f} "
              f"readings/s, batches of {args.batch_rows}, gzip level {args.gzip_level}"
              f"{' (shipped)' if args.gzip_level == shipped else ''}, "
              f"{up.bytes_sent / dt / 1e6:.1f} MB/s JSON; duplicates {st['duplicates']}, "
              f"conflicts {st['conflicts']}")
        rss = [m for _, m in sampler.samples] or [r0]
        n = len(rss)
        q = [rss[0], rss[n // 4], rss[n // 2], rss[3 * n // 4], rss[-1]]
        print(f"RSS during drain (MB): start {r0:.0f}, quartiles " +
              " / ".join(f"{x:.0f}" for x in q) + f", max {max(rss):.0f}")
        assert st["readings"] == args.rows
        if args.readme:
            readme_block("bench_drain", "\n".join([
                "| `bench_drain.py`: backlog to the loopback receiver | readings/s | RSS | "
                "gzip level | checks |", "|---|---|---|---|---|",
                f"| {args.rows:,} readings, batches of {args.batch_rows:,} | "
                f"{st['readings'] / dt:,.0f} | {min(rss):.0f} to {max(rss):.0f} MB | "
                f"{args.gzip_level}{' (shipped)' if args.gzip_level == shipped else ''} | "
                f"duplicates {st['duplicates']}, conflicts {st['conflicts']} |"]))
    finally:
        rx.terminate()
        rx.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
