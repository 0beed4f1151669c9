"""The buffer's connection, counters and space management (see :mod:`.store` for batches).

Used only by the buffer's single writer thread, like :class:`.store.Store` (its subclass).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import schema
from .lag import CommitLag
from .pack import Key, Packer, Run, per_source, prefix

TABLES = ("events", "features", "readings")
# The gate table (newest timestamp per source, for the reading gate after a restart) is written
# at most this often, inside a commit of readings, and at a clean close: rewriting one row per
# source on every commit cost more than packing the readings. A crash loses at most this much
# of it: a sample re-delivered after the crash may then reach the backend twice (answered 409,
# split down to the row, never stored twice).
GATE_WRITE_S = 1.0
Pos = tuple[int, int]  # (chunk id, offset in the chunk)


@dataclass
class Cursors:
    """One sink's cursors: the last event id and feature id assigned to its batches, and the
    reading position up to which readings are."""

    ev: int = 0
    ft: int = 0
    r: Pos = (0, 0)


class StoreBase:
    """Connection, transactions, counters, the reading cursor, quotas and vacuum."""

    def __init__(self, conn: sqlite3.Connection, synchronous: str) -> None:
        self.conn = conn
        self.sync = synchronous.upper()
        self.epoch = schema.epoch(conn)
        self.packer = Packer()  # for the writer thread
        self.src_ids: dict[Key, int] = {}
        self._prefixes: dict[str, list[str]] = {}
        self.src_rev: dict[int, Key] = {}
        for sid, a, b, c in conn.execute("SELECT id, sensor_id, sensor_type, unit FROM sources"):
            self.src_ids[(a, b, c)] = sid
            self.src_rev[sid] = (a, b, c)
        self.rows: dict[str, int] = {}
        self.events_bytes = 0
        self.head_ts: dict[str, int | None] = {}
        self.dropped: dict[int, int] = dict(conn.execute("SELECT src, n FROM dropped").fetchall())
        self.quarantined = 0
        self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self.cursors: dict[str, Cursors] = {}
        self.consumers: dict[str, frozenset[str]] = {}  # sinks registered in this run
        self.rtotal = 0
        self._gate: dict[int, int] = {}  # source id -> newest µs not yet in the gate table
        self._gate_due = 0.0
        self.lag = CommitLag()  # reading timestamp -> commit, per committed reading
        self._load_sinks()
        self.recount()

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def tx(self, full: bool = False) -> Iterator[sqlite3.Connection]:
        bump = full and self.sync != "FULL"
        if bump:
            self.conn.execute("PRAGMA synchronous = FULL")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        finally:
            if bump:
                self.conn.execute(f"PRAGMA synchronous = {self.sync}")

    def gate_rows(self, run: Run, ids: list[int]) -> list[tuple[int, int]]:
        """(source id, µs) of each source's last reading in ``run``, merged into the gate rows
        not written yet; returns them when they are due (then forgotten), else ``[]``. One pass
        in C per run (a later reading of a source overwrites its earlier ones)."""
        pend = self._gate
        for i, us in dict(zip(run.idx, run.us, strict=True)).items():
            src = ids[i]
            if us > pend.get(src, -1):
                pend[src] = us
        now = time.monotonic()
        if now < self._gate_due:
            return []
        self._gate_due = now + GATE_WRITE_S
        rows, self._gate = list(pend.items()), {}
        return rows

    def write_gate(self, rows: list[tuple[int, int]]) -> None:
        """Upsert gate rows (in the caller's transaction)."""
        if rows:
            self.conn.executemany("INSERT INTO gate(src, us) VALUES (?, ?) ON CONFLICT(src) DO "
                                  "UPDATE SET us = max(us, excluded.us)", rows)

    def mark_clean(self) -> None:
        """At close: the gate rows not written yet, then the clean-shutdown mark."""
        rows, self._gate = list(self._gate.items()), {}
        with self.tx() as c:
            self.write_gate(rows)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', '1')")

    def _head(self, table: str) -> int | None:
        row = self.conn.execute(f"SELECT ts FROM {table} ORDER BY id LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    # -- sinks and cursors ----------------------------------------------------------------
    def _load_sinks(self) -> None:
        self.cursors = {str(r[0]): Cursors(int(r[1]), int(r[2]), (int(r[3]), int(r[4])))
                        for r in self.conn.execute("SELECT name, ev, ft, rc, ro FROM sinks")}

    @contextmanager
    def _guard(self, sink: str) -> Iterator[None]:
        """Restore the sink's cursors in memory if the transaction inside fails."""
        before = self.cursors.get(sink)
        try:
            yield
        except BaseException:
            if before is not None:
                self.cursors[sink] = before
            raise

    def _move(self, sink: str, cur: Cursors) -> None:
        """Set the sink's cursors (inside a transaction guarded by :meth:`_guard`)."""
        self.cursors[sink] = cur
        self._save_cursors(sink)

    def _save_cursors(self, sink: str) -> None:
        cur = self.cursors[sink]
        self.conn.execute("UPDATE sinks SET ev = ?, ft = ?, rc = ?, ro = ? WHERE name = ?",
                          (cur.ev, cur.ft, cur.r[0], cur.r[1], sink))

    def rhead(self) -> Pos:
        """The reading position before which every registered consumer has delivered."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'rhead'").fetchone()
        if row is None:
            return (0, 0)
        a, b = str(row[0]).split(":")
        return int(a), int(b)

    def _set_rhead(self, pos: Pos) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rhead', ?)",
                          (f"{pos[0]}:{pos[1]}",))

    def _pending_ranges(self, col: str, exclude: Iterable[str] = ()) -> list[tuple[int, int]]:
        """``(lo, hi)`` of ``col`` (``events``, ``features``, ``readings``) of every pending
        batch of every sink not in ``exclude``: rows nobody may delete or drop."""
        skip = list(exclude)
        # (never "NOT IN (NULL)": that is NULL, i.e. false, for every row)
        but = f" AND sink NOT IN ({','.join('?' * len(skip))})" if skip else ""
        return [(int(a), int(b)) for a, b in self.conn.execute(
            f"SELECT lo_{col}, hi_{col} FROM batches WHERE state = 'pending' AND lo_{col} IS "
            f"NOT NULL{but}", skip)]

    @staticmethod
    def _outside(ranges: list[tuple[int, int]]) -> tuple[str, list[int]]:
        """SQL (`` AND NOT (id BETWEEN ? AND ?)`` …) keeping rows outside ``ranges``."""
        return ("".join(" AND NOT (id BETWEEN ? AND ?)" for _ in ranges),
                [x for r in ranges for x in r])

    def _upto(self, sink: str, table: str) -> int:
        """The last id of ``table`` that ``sink`` has settled (events, features)."""
        row = self.conn.execute(f"SELECT min(lo_{table}) FROM batches WHERE state = 'pending' "
                                "AND sink = ?", (sink,)).fetchone()
        cur = self.cursors[sink]
        return int(row[0]) - 1 if row[0] is not None else (cur.ev if table == "events"
                                                            else cur.ft)

    def _rupto(self, sink: str) -> Pos:
        """The reading position before which ``sink`` has settled everything."""
        row = self.conn.execute("SELECT lo_readings, lo_off FROM batches WHERE state = "
                                "'pending' AND sink = ? AND lo_readings IS NOT NULL ORDER BY "
                                "lo_readings, lo_off LIMIT 1", (sink,)).fetchone()
        return (int(row[0]), int(row[1] or 0)) if row is not None else self.cursors[sink].r

    def _free(self) -> None:
        """Delete the rows every registered consumer of their table has settled (inside a
        transaction), except those another sink's pending batch holds; keep the counters."""
        c = self.conn
        for table in ("events", "features"):
            cons = [s for s, ts in self.consumers.items() if table in ts]
            if not cons:
                continue
            lw = min(self._upto(s, table) for s in cons)
            out, args = self._outside(self._pending_ranges(table, exclude=cons))
            if table == "events":
                self.events_bytes -= int(c.execute(
                    "SELECT coalesce(sum(length(body)), 0) + 40 * count(*) FROM events "
                    f"WHERE id <= ?{out}", (lw, *args)).fetchone()[0])
            self.rows[table] -= c.execute(f"DELETE FROM {table} WHERE id <= ?{out}",
                                          (lw, *args)).rowcount
        cons = [s for s, ts in self.consumers.items() if "readings" in ts]
        if not cons:
            return
        lw_c, lw_off = min(self._rupto(s) for s in cons)
        ranges = self._pending_ranges("readings", exclude=cons)
        out, args = self._outside(ranges)
        gone = int(c.execute(f"SELECT coalesce(sum(n), 0) FROM readings WHERE id < ?{out}",
                             (lw_c, *args)).fetchone()[0])
        c.execute(f"DELETE FROM readings WHERE id < ?{out}", (lw_c, *args))
        if lw_off and not any(a <= lw_c <= b for a, b in ranges):
            row = c.execute("SELECT n FROM readings WHERE id = ?", (lw_c,)).fetchone()
            if row is not None and int(row[0]) <= lw_off:
                c.execute("DELETE FROM readings WHERE id = ?", (lw_c,))
                gone += int(row[0])
        self.rtotal -= gone
        self._set_rhead(max(self.rhead(), (lw_c, lw_off)))
        self._count_readings()

    def recount(self) -> None:
        """Re-read the counters (at start, or after another connection changed the tables)."""
        c = self.conn
        self.rows = {t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                     for t in ("events", "features")}
        self.rtotal = int(c.execute("SELECT coalesce(sum(n), 0) FROM readings").fetchone()[0])
        self._count_readings()
        self.events_bytes = int(c.execute(
            "SELECT coalesce(sum(length(body)), 0) + 40 * count(*) FROM events").fetchone()[0])
        self.quarantined = int(c.execute(
            "SELECT count(*) FROM quarantine WHERE requeued_us IS NULL").fetchone()[0])
        self._refresh_heads()

    def _count_readings(self) -> None:
        """Buffered readings: all readings of the stored chunks but the delivered part of the
        chunk holding ``rhead`` (it is kept until its end is delivered)."""
        cid, off = self.rhead()
        row = self.conn.execute("SELECT n FROM readings WHERE id = ?", (cid,)).fetchone()
        self.rows["readings"] = self.rtotal - (min(off, int(row[0])) if row and off else 0)

    def _refresh_heads(self) -> None:
        self.head_ts = {t: self._head(t) for t in TABLES}

    # -- ingest ---------------------------------------------------------------------------
    def source_id(self, key: Key) -> int:
        sid = self.src_ids.get(key)
        if sid is None:
            # Own tiny autocommit transaction: the cache never holds a rolled-back id.
            self.conn.execute("INSERT OR IGNORE INTO sources(sensor_id, sensor_type, unit) "
                              "VALUES (?, ?, ?)", key)
            sid = int(self.conn.execute(
                "SELECT id FROM sources WHERE sensor_id=? AND sensor_type=? AND unit=?",
                key).fetchone()[0])
            self.src_ids[key] = sid
            self.src_rev[sid] = key
        return sid

    def prefixes(self, srcs: str) -> list[str]:
        """The JSON prefix of each source id in a chunk's ``srcs``."""
        out = self._prefixes.get(srcs)
        if out is None:
            if len(self._prefixes) > 10_000:
                self._prefixes.clear()
            out = []
            for s in srcs.split(","):
                key = self.key_of(int(s))
                if key is None:
                    raise LookupError(f"buffer: unknown source id {s}")
                out.append(prefix(key))
            self._prefixes[srcs] = out
        return out

    def key_of(self, src: int) -> Key | None:
        key = self.src_rev.get(src)
        if key is None:  # added by another connection (quarantine requeue from the CLI)
            row = self.conn.execute("SELECT sensor_id, sensor_type, unit FROM sources WHERE "
                                    "id = ?", (src,)).fetchone()
            if row is None:
                return None
            key = self.src_rev[src] = (row[0], row[1], row[2])
            self.src_ids[key] = src
        return key

    # -- space ----------------------------------------------------------------------------
    def pages(self) -> tuple[int, int]:
        total = int(self.conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        return total, free

    def used_bytes(self) -> int:
        total, free = self.pages()
        return (total - free) * self.page_size

    def drop_oldest(self, table: str, n: int, older_than_us: int | None = None) -> int:
        """Delete about ``n`` oldest readings (whole chunks) or features that no sink holds in
        a pending batch; count dropped readings per source."""
        c = self.conn
        cond, extra = ("", []) if older_than_us is None else (
            " AND ts < ?" if table == "features" else " AND ts_max < ?", [older_than_us])
        out, args = self._outside(self._pending_ranges(table))
        if table == "features":
            row = c.execute(f"SELECT max(id) FROM (SELECT id FROM features WHERE 1{out}{cond} "
                            "ORDER BY id LIMIT ?)", (*args, *extra, n)).fetchone()
            if row is None or row[0] is None:
                return 0
            with self.tx(full=True):
                gone = c.execute(f"DELETE FROM features WHERE id <= ?{out}{cond}",
                                 (int(row[0]), *args, *extra)).rowcount
            self.rows[table] -= gone
            self.head_ts[table] = self._head(table)
            return int(gone)
        # a chunk that a sink's cursor or the delivered head cuts in two stays
        cut = {p for p in [self.rhead(), *(cu.r for cu in self.cursors.values())] if p[1] > 0}
        victims: list[tuple[int, int, str]] = []
        got = 0
        for rid, k, srcs in c.execute(f"SELECT id, n, srcs FROM readings WHERE 1{out}{cond} "
                                      "ORDER BY id", (*args, *extra)):
            if got >= n:
                break
            if any(p[0] == rid for p in cut):
                continue
            victims.append((rid, k, srcs))
            got += k
        if not victims:
            return 0
        per_src: dict[int, int] = {}
        for rid, k, srcs in victims:
            blob = c.execute("SELECT idx FROM readings WHERE id = ?", (rid,)).fetchone()[0]
            for src, m in per_source(srcs, blob, k).items():
                per_src[src] = per_src.get(src, 0) + m
        with self.tx(full=True):
            c.executemany("DELETE FROM readings WHERE id = ?", [(v[0],) for v in victims])
            c.executemany("INSERT INTO dropped(src, n) VALUES (?, ?) ON CONFLICT(src) "
                          "DO UPDATE SET n = n + excluded.n", list(per_src.items()))
        for src, k in per_src.items():
            self.dropped[src] = self.dropped.get(src, 0) + k
        self.rtotal -= got
        self._count_readings()
        self.head_ts["readings"] = self._head("readings")
        return got

    def vacuum(self, max_pages: int) -> int:
        """Give free pages back to the file system (incremental vacuum)."""
        _, free = self.pages()
        if free:
            # executescript steps the pragma to completion (execute() would free one page)
            self.conn.executescript(f"PRAGMA incremental_vacuum({max(1, min(free, max_pages))});")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return free

    def dropped_by_sensor(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for src, n in self.dropped.items():
            key = self.key_of(src)
            name = key[0] if key is not None else f"src{src}"
            out[name] = out.get(name, 0) + n
        return out
