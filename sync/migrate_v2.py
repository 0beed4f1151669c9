"""Schema v1 → v2: one row per reading → packed chunks (see :mod:`.pack`).

Runs inside the migration's transaction. Every pending batch keeps its key and exactly its rows,
in their order: they become that batch's slice. The unassigned rows follow, in order, read in
windows of :data:`WINDOW` rows. Nothing is lost:
rows that point at a batch that is not pending (never expected) are treated as unassigned.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from .pack import Key, Packer, Run, chunk_rows

WINDOW = 20_000
INSERT = ("INSERT INTO readings(n, ts, ts_max, size, srcs, idx, body) "
          "VALUES (?, ?, ?, ?, ?, ?, ?)")


def _run(packer: Packer, rows: Iterable[tuple[Any, ...]], keys: dict[int, Key]) -> Run:
    run = Run()
    for src, ts, value, quality, meta in rows:
        us, key = int(ts), keys[src]
        run.add(packer.fragment(None if value is None else float(value), us, float(quality),
                                meta), us, key)
    return run


def _insert(conn: sqlite3.Connection, run: Run, src_of: dict[Key, int]
            ) -> tuple[int, int, int] | None:
    """Insert chunks; returns (first id, last id, n of the last chunk) or None if empty."""
    first = last = last_n = -1
    for row in chunk_rows(run, [src_of[k] for k in run.table]):
        cur = conn.execute(INSERT, row)
        last, last_n = int(cur.lastrowid or 0), row[0]
        if first < 0:
            first = last
    return None if first < 0 else (first, last, last_n)


def convert_v1_readings(conn: sqlite3.Connection) -> None:
    packer = Packer()
    keys: dict[int, Key] = {int(r[0]): (r[1], r[2], r[3]) for r in conn.execute(
        "SELECT id, sensor_id, sensor_type, unit FROM sources")}
    src_of = {k: s for s, k in keys.items()}
    cursor = (0, 0)
    pending = conn.execute("SELECT id, lo_readings, hi_readings FROM batches "
                           "WHERE state = 'pending' ORDER BY id").fetchall()
    for bid, lo, hi in pending:
        got = None
        if lo is not None:
            rows = conn.execute("SELECT src, ts, value, quality, meta FROM readings_v1 "
                                "WHERE id BETWEEN ? AND ? AND batch = ? ORDER BY id",
                                (lo, hi, bid)).fetchall()
            got = _insert(conn, _run(packer, rows, keys), src_of)
            n = len(rows)
        if got is None:
            conn.execute("UPDATE batches SET lo_readings = NULL, hi_readings = NULL, "
                         "n_readings = 0 WHERE id = ?", (bid,))
            continue
        first, last, last_n = got
        conn.execute("UPDATE batches SET lo_readings = ?, lo_off = 0, hi_readings = ?, "
                     "hi_end = ?, n_readings = ? WHERE id = ?", (first, last, last_n, n, bid))
        cursor = (last + 1, 0)
    pend_ids = {int(p[0]) for p in pending}
    after = 0
    while True:
        rows = conn.execute("SELECT id, src, ts, value, quality, meta, batch FROM readings_v1 "
                            "WHERE id > ? ORDER BY id LIMIT ?", (after, WINDOW)).fetchall()
        if not rows:
            break
        after = int(rows[-1][0])
        free = [r[1:6] for r in rows if r[6] is None or int(r[6]) not in pend_ids]
        if free:
            _insert(conn, _run(packer, free, keys), src_of)
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rcursor', ?)",
                 (f"{cursor[0]}:{cursor[1]}",))
