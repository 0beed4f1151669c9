"""Schema v2 → v3: delivery transactions per named sink.

Runs inside the migration's transaction. v2 had one implicit consumer (the HTTP uploader): its
state becomes the sink ``uploader`` — its pending batches keep their keys and exactly their
rows, its cursors are where v2 had assigned up to (the last event/feature id of a pending batch,
``meta.rcursor``). ``events`` and ``features`` are rebuilt with AUTOINCREMENT ids and without
the ``batch`` column (a batch's members are now all rows of its id range): rows of pending
batches keep their ids, the unassigned rows are copied after them, in order, with new ids, so no
unassigned row can fall inside a pending batch's range.
"""

from __future__ import annotations

import sqlite3
import time

UPLOADER = "uploader"
_TABLE = """CREATE TABLE {t}(
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, body TEXT NOT NULL)"""
SINKS = """CREATE TABLE sinks(
    name TEXT PRIMARY KEY, tables TEXT NOT NULL, ev INTEGER NOT NULL, ft INTEGER NOT NULL,
    rc INTEGER NOT NULL, ro INTEGER NOT NULL, created_us INTEGER NOT NULL) WITHOUT ROWID"""
GATE = "CREATE TABLE gate(src INTEGER PRIMARY KEY, us INTEGER NOT NULL)"


def _rebuild(conn: sqlite3.Connection, table: str, pending: list[int]) -> int:
    """Rebuild ``table`` with AUTOINCREMENT ids; returns the last id assigned to a batch."""
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v2")
    conn.execute(_TABLE.format(t=table))
    assigned = f"batch IN ({','.join('?' * len(pending))})" if pending else "0"
    conn.execute(f"INSERT INTO {table}(id, ts, body) SELECT id, ts, body FROM {table}_v2 "
                 f"WHERE {assigned} ORDER BY id", pending)
    last = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
    # the rest (unassigned; rows of a batch no longer pending, never expected) after them
    conn.execute(f"INSERT INTO {table}(ts, body) SELECT ts, body FROM {table}_v2 "
                 f"WHERE batch IS NULL OR NOT ({assigned}) ORDER BY id", pending)
    conn.execute(f"DROP TABLE {table}_v2")
    return int(last)


def _head(conn: sqlite3.Connection, rcursor: tuple[int, int]) -> tuple[int, int]:
    """Where the delivered readings end (v2: the first pending slice, else the cursor)."""
    row = conn.execute("SELECT lo_readings, lo_off FROM batches WHERE state = 'pending' AND "
                       "lo_readings IS NOT NULL ORDER BY id LIMIT 1").fetchone()
    return (int(row[0]), int(row[1] or 0)) if row is not None else rcursor


def per_sink_cursors(conn: sqlite3.Connection) -> None:
    pending = [int(r[0]) for r in conn.execute(
        "SELECT id FROM batches WHERE state = 'pending' ORDER BY id")]
    ev = _rebuild(conn, "events", pending)
    ft = _rebuild(conn, "features", pending)
    row = conn.execute("SELECT value FROM meta WHERE key = 'rcursor'").fetchone()
    rc, ro = (int(x) for x in str(row[0]).split(":")) if row is not None else (0, 0)
    head = _head(conn, (rc, ro))
    conn.execute("ALTER TABLE batches ADD COLUMN sink TEXT NOT NULL DEFAULT 'uploader'")
    conn.execute(SINKS)
    conn.execute("INSERT INTO sinks(name, tables, ev, ft, rc, ro, created_us) VALUES "
                 "(?, 'events,features,readings', ?, ?, ?, ?, ?)",
                 (UPLOADER, ev, ft, rc, ro, time.time_ns() // 1000))
    conn.execute("DELETE FROM meta WHERE key = 'rcursor'")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rhead', ?)",
                 (f"{head[0]}:{head[1]}",))
    conn.execute(GATE)
