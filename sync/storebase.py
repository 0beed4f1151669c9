"""The buffer's connection, counters and space management (see :mod:`.store` for batches).

Used only by the buffer's single writer thread, like :class:`.store.Store` (its subclass).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from . import schema
from .pack import Key, Packer, per_source, prefix

TABLES = ("events", "features", "readings")
Pos = tuple[int, int]  # (chunk id, offset in the chunk)


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

    def _head(self, table: str) -> int | None:
        row = self.conn.execute(f"SELECT ts FROM {table} ORDER BY id LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def cursor(self) -> Pos:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'rcursor'").fetchone()
        if row is None:
            return (0, 0)
        a, b = str(row[0]).split(":")
        return int(a), int(b)

    def _set_cursor(self, pos: Pos) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rcursor', ?)",
                          (f"{pos[0]}:{pos[1]}",))

    def recount(self) -> None:
        """Re-read the counters (at start, or after another connection changed the tables)."""
        c = self.conn
        self.rows = {t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                     for t in ("events", "features")}
        total = int(c.execute("SELECT coalesce(sum(n), 0) FROM readings").fetchone()[0])
        self.rows["readings"] = total - self._delivered_prefix()
        self.events_bytes = int(c.execute(
            "SELECT coalesce(sum(length(body)), 0) + 40 * count(*) FROM events").fetchone()[0])
        self.quarantined = int(c.execute(
            "SELECT count(*) FROM quarantine WHERE requeued_us IS NULL").fetchone()[0])
        self._refresh_heads()

    def _delivered_prefix(self) -> int:
        """Readings of the first chunk already delivered (it is kept until its end is)."""
        head = self.conn.execute("SELECT min(id) FROM readings").fetchone()[0]
        if head is None:
            return 0
        row = self.conn.execute("SELECT lo_readings, lo_off FROM batches WHERE state = "
                                "'pending' AND lo_readings IS NOT NULL ORDER BY id LIMIT 1"
                                ).fetchone()
        pos = (int(row[0]), int(row[1] or 0)) if row is not None else self.cursor()
        return pos[1] if pos[0] == head else 0

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
        """Delete about ``n`` oldest unassigned readings (whole chunks) or features; count
        dropped readings per source."""
        c = self.conn
        if table == "features":
            cond, extra = ("", ()) if older_than_us is None else (" AND ts < ?", (older_than_us,))
            row = c.execute(f"SELECT max(id) FROM (SELECT id FROM features WHERE batch IS NULL"
                            f"{cond} ORDER BY id LIMIT ?)", (*extra, n)).fetchone()
            if row is None or row[0] is None:
                return 0
            with self.tx(full=True):
                gone = c.execute(f"DELETE FROM features WHERE id <= ? AND batch IS NULL{cond}",
                                 (int(row[0]), *extra)).rowcount
            self.rows[table] -= gone
            self.head_ts[table] = self._head(table)
            return int(gone)
        cid, off = self.cursor()
        first = cid + 1 if off > 0 else cid  # a partly assigned chunk stays
        cond, extra = ("", ()) if older_than_us is None else (" AND ts_max < ?", (older_than_us,))
        victims: list[tuple[int, int, str]] = []
        got = 0
        for rid, k, srcs in c.execute(f"SELECT id, n, srcs FROM readings WHERE id >= ?{cond} "
                                      "ORDER BY id", (first, *extra)):
            if got >= n:
                break
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
        self.rows["readings"] -= got
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
