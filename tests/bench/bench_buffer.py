"""Buffer ingest benchmark: durable group commit vs per-row commits vs raw in-memory executemany,
and the cost of synchronous=FULL against NORMAL.

"Durable" means ``await Buffer.put`` has returned, i.e. the transaction holding the readings is
committed (WAL) at the configured ``synchronous`` level. "Per-row commits" is the naive design:
one row per reading (the v1 layout), one transaction per reading, same file, same pragmas.
Group commit and per-row commits are compared at the same level (NORMAL/NORMAL, FULL/FULL).

    .venv/bin/python tests/bench/bench_buffer.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from edge_agent.records import Event, Reading
from edge_agent.sync import schema
from edge_agent.sync.buffer import Buffer, BufferConfig

PUT = 1000


def make_lists(n_lists: int, per: int) -> list[list[Reading]]:
    t0 = time.time() - 3600
    return [[Reading(f"line3.press{j % 20:02d}.temp", "temperature", 20.0 + j * 0.01, "degC",
                     t0 + (i * per + j) * 1e-4) for j in range(per)] for i in range(n_lists)]


async def buffer_ingest(path: Path, sync: str, lists: list[list[Reading]], repeat: int,
                        producers: int) -> tuple[float, int]:
    buf = Buffer(path, BufferConfig(synchronous=sync))  # type: ignore[arg-type]
    await buf.start()
    queue: asyncio.Queue[list[Reading]] = asyncio.Queue()
    for _ in range(repeat):
        for chunk in lists:
            queue.put_nowait(chunk)

    async def producer() -> None:
        while not queue.empty():
            await buf.put(queue.get_nowait())

    t = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    dt = time.perf_counter() - t
    commits = int(buf.stats()["commits"])  # type: ignore[call-overload]
    await buf.close()
    return sum(len(x) for x in lists) * repeat / dt, commits


def tuples(lists: list[list[Reading]]) -> list[tuple[int, int, float, float, None]]:
    return [(j % 20 + 1, int(r.timestamp * 1e6), r.value or 0.0, 1.0, None)
            for chunk in lists for j, r in enumerate(chunk)]


ROW_TABLE = ("CREATE TABLE rows(id INTEGER PRIMARY KEY, src INTEGER NOT NULL, ts INTEGER NOT "
             "NULL, value REAL, quality REAL NOT NULL, meta TEXT, batch INTEGER)")
ROW_INSERT = "INSERT INTO rows(src, ts, value, quality, meta) VALUES (?,?,?,?,?)"


def per_row_commits(path: Path, sync: str, rows: list[tuple[int, int, float, float, None]]
                    ) -> float:
    """The naive design: one row per reading (the v1 layout), one transaction per reading,
    same pragmas as the buffer (WAL, ``synchronous``)."""
    conn = schema.connect(str(path), sync.upper())
    conn.execute(ROW_TABLE)
    t = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN")
        conn.execute(ROW_INSERT, row)
        conn.execute("COMMIT")
    dt = time.perf_counter() - t
    conn.close()
    return len(rows) / dt


def raw_memory(rows: list[tuple[int, int, float, float, None]]) -> float:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(ROW_TABLE)
    t = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(ROW_INSERT, rows)
    conn.execute("COMMIT")
    return len(rows) / (time.perf_counter() - t)


async def small_commit_latency(path: Path, sync: str, n: int, events: bool) -> float:
    """Mean latency of one put of 1 record when puts are sequential (no grouping possible)."""
    buf = Buffer(path, BufferConfig(synchronous=sync, commit_interval=0.0))  # type: ignore[arg-type]
    await buf.start()
    t0 = time.time() - 60
    t = time.perf_counter()
    for i in range(n):
        rec = (Event("bench", "x", t0 + i) if events
               else Reading("s", "t", 1.0, "u", t0 + i))
        await buf.put([rec])
    dt = time.perf_counter() - t
    await buf.close()
    return dt / n * 1e3


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    lists = make_lists(200, PUT)
    repeat = max(1, args.rows // (200 * PUT))
    rows = tuples(lists)
    with tempfile.TemporaryDirectory(dir=".") as d:
        dd = Path(d)
        print(f"SQLite {sqlite3.sqlite_version}, {repeat * len(rows):,} readings, puts of {PUT}")
        group: dict[str, float] = {}
        for sync in ("normal", "full"):
            rate, commits = await buffer_ingest(dd / f"b-{sync}.db", sync, lists, repeat, 4)
            group[sync] = rate
            print(f"Buffer.put durable ({sync.upper():6}), 4 producers: {rate:>11,.0f} readings/s"
                  f"  ({commits} commits)")
        small = make_lists(2000, 10)
        rate, commits = await buffer_ingest(dd / "b-small.db", "normal", small, 5, 64)
        print(f"Buffer.put puts of 10, 64 producers (NORMAL): {rate:>9,.0f} readings/s  "
              f"({commits} commits for 20,000 puts)")
        per_row: dict[str, float] = {}
        for sync in ("normal", "full"):
            n = 20_000 if sync == "normal" else 2_000
            per_row[sync] = r = per_row_commits(dd / f"row-{sync}.db", sync, rows[:n])
            print(f"per-row commits ({sync.upper():6}):              {r:>11,.0f} readings/s")
        for sync in ("normal", "full"):
            print(f"group commit / per-row commits, both {sync.upper():6}:  "
                  f"{group[sync] / per_row[sync]:>8.1f}x")
        print(f"raw executemany into :memory::            {raw_memory(rows):>11,.0f} readings/s")
        for sync in ("normal", "full"):
            for ev in (False, True):
                ms = await small_commit_latency(dd / f"lat-{sync}-{ev}.db", sync, 300, ev)
                what = "event (always FULL)" if ev else "reading"
                print(f"sequential 1-record put, base {sync.upper():6}, {what:20}: {ms:6.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
