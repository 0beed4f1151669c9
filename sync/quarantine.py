"""Quarantined batches (refused with 400/422): list them and put their rows back in the queue.

A quarantined batch keeps the exact JSON body that was refused and the receiver's answer as the
reason. :func:`requeue` parses that body and re-inserts its rows as new buffer rows (they are
sent again in new batches with new idempotency keys); the quarantine entry is kept, marked
re-queued. Both functions open their own connection, so they work while the agent runs (WAL).

CLI (wired by the agent as ``edge-agent quarantine list|requeue``)::

    python -m edge_agent.sync.quarantine --db /var/lib/edge-agent/buffer.db list
    python -m edge_agent.sync.quarantine --db ... requeue 3
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import schema
from .pack import Key, Packer, Run, chunk_rows, dumps

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass(frozen=True)
class QuarantinedBatch:
    id: int
    batch_key: str
    created: float
    status: int | None
    reason: str
    n_rows: int
    requeued: float | None


def _us(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _US


def _open(db_path: Path | str) -> sqlite3.Connection:
    if not Path(db_path).exists():
        raise FileNotFoundError(f"no buffer database at {db_path}")
    conn = schema.connect(str(db_path))
    schema.migrate(conn)
    return conn


def list_quarantine(db_path: Path | str, include_requeued: bool = False) -> list[QuarantinedBatch]:
    conn = _open(db_path)
    try:
        sql = ("SELECT id, batch_key, created_us, status, reason, n_rows, requeued_us "
               "FROM quarantine")
        if not include_requeued:
            sql += " WHERE requeued_us IS NULL"
        return [QuarantinedBatch(int(r[0]), r[1], r[2] / 1e6, r[3], r[4], int(r[5]),
                                 None if r[6] is None else r[6] / 1e6)
                for r in conn.execute(sql + " ORDER BY id")]
    finally:
        conn.close()


def quarantine_body(db_path: Path | str, qid: int) -> str:
    conn = _open(db_path)
    try:
        row = conn.execute("SELECT body FROM quarantine WHERE id = ?", (qid,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise LookupError(f"no quarantined batch {qid}")
    return str(row[0])


def _source(conn: sqlite3.Connection, key: Key) -> int:
    conn.execute("INSERT OR IGNORE INTO sources(sensor_id, sensor_type, unit) VALUES (?, ?, ?)",
                 key)
    return int(conn.execute("SELECT id FROM sources WHERE sensor_id=? AND sensor_type=? AND "
                            "unit=?", key).fetchone()[0])


def requeue_conn(conn: sqlite3.Connection, qid: int) -> int:
    """Re-insert the rows of quarantined batch ``qid``; returns how many rows were queued."""
    row = conn.execute("SELECT body, requeued_us FROM quarantine WHERE id = ?", (qid,)).fetchone()
    if row is None:
        raise LookupError(f"no quarantined batch {qid}")
    if row[1] is not None:
        raise LookupError(f"quarantined batch {qid} was already re-queued")
    doc: dict[str, Any] = json.loads(row[0])
    readings, feats, events = (doc.get("readings") or [], doc.get("features") or [],
                               doc.get("events") or [])
    before = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        packer, run = Packer(), Run()
        for r in readings:
            key: Key = (r["sensor_id"], r["sensor_type"], r["unit"])
            us = _us(r["timestamp"])
            meta = r.get("metadata")
            value = r.get("value")
            run.add(packer.fragment(None if value is None else float(value), us,
                                    float(r.get("quality", 0.0)), dumps(meta) if meta else None),
                    us, key)
        conn.executemany("INSERT INTO readings(n, ts, ts_max, size, srcs, idx, body) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         chunk_rows(run, [_source(conn, k) for k in run.table]))
        conn.executemany("INSERT INTO features(ts, body) VALUES (?, ?)",
                         [(_us(f["window_start"]), dumps(f)) for f in feats])
        conn.executemany("INSERT INTO events(ts, body) VALUES (?, ?)",
                         [(_us(e["timestamp"]), dumps(e)) for e in events])
        conn.execute("UPDATE quarantine SET requeued_us = ? WHERE id = ?",
                     (time.time_ns() // 1000, qid))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute(f"PRAGMA synchronous = {before}")
    return len(readings) + len(feats) + len(events)


def requeue(db_path: Path | str, qid: int) -> int:
    """Put quarantined batch ``qid`` back in the send queue (new batches, new keys)."""
    conn = _open(db_path)
    try:
        return requeue_conn(conn, qid)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-agent quarantine",
                                 description="Batches the ingest API refused (400/422).")
    ap.add_argument("--db", required=True, help="path of the buffer database")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list quarantined batches")
    ls.add_argument("--all", action="store_true", help="include re-queued ones")
    sh = sub.add_parser("show", help="print the refused body of one batch")
    sh.add_argument("id", type=int)
    rq = sub.add_parser("requeue", help="send the rows of a quarantined batch again")
    rq.add_argument("id", type=int)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            items = list_quarantine(args.db, include_requeued=args.all)
            for q in items:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(q.created))
                state = " (re-queued)" if q.requeued else ""
                print(f"{q.id}\t{when}\t{q.status}\t{q.n_rows} rows\t{q.batch_key}{state}\t"
                      f"{q.reason[:120]}")
            if not items:
                print("no quarantined batches")
        elif args.cmd == "show":
            print(quarantine_body(args.db, args.id))
        else:
            n = requeue(args.db, args.id)
            print(f"re-queued {n} rows of quarantined batch {args.id}")
    except (LookupError, FileNotFoundError, sqlite3.Error, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
