"""Synchronous SQL operations of the buffer, run only by the buffer's single writer thread.

Nothing here is thread-safe on purpose: one :class:`Store` owns one connection and is used from
one thread. Every multi-statement change is one ``BEGIN IMMEDIATE … COMMIT`` transaction;
changes that must survive a power cut (events, batch bookkeeping) commit at ``synchronous=FULL``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from edge_agent.records import Event, FeatureVector, Reading, format_us, to_us

from . import schema

TABLES = ("events", "features", "readings")
_MAX_US = 253_402_300_800_000_000  # year 10000
_MEMBER = "id BETWEEN ? AND ? AND batch = ?"
_READING_OVERHEAD = 72  # JSON bytes of one reading beside its source strings (estimate)

ReadingRow = tuple[int, int, float | None, float, str | None]  # src, ts, value, quality, meta


@dataclass
class BatchRows:
    """One batch as stored: its key and exact membership, in send order."""

    id: int
    key: str
    attempts: int
    events: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    readings: list[ReadingRow] = field(default_factory=list)
    sources: dict[int, tuple[str, str, str]] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.events) + len(self.features) + len(self.readings)


@dataclass
class Converted:
    readings: list[ReadingRow] = field(default_factory=list)
    features: list[tuple[int, str]] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return len(self.readings) + len(self.features) + len(self.events)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Compact JSON that never contains NaN/Inf (they become strings) and never fails."""
    try:
        return json.dumps(obj, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_clean(obj), separators=(",", ":"), default=str, allow_nan=False)


def _finite(v: float | None) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _us(ts: float, what: str) -> int:
    if not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ValueError(f"{what}: timestamp {ts!r} is not a finite number")
    us = to_us(ts)
    if not 0 <= us < _MAX_US:
        raise ValueError(f"{what}: timestamp {ts!r} out of range")
    return us


def feature_body(f: FeatureVector) -> tuple[int, str]:
    body: dict[str, Any] = {
        "source_id": f.source_id, "window_start": format_us(_us(f.window_start, f.source_id)),
        "window_end": format_us(_us(f.window_end, f.source_id)),
        "values": {str(k): _finite(v) for k, v in f.values.items()},
    }
    if f.model is not None:
        body["model"] = {"name": f.model.name, "version": f.model.version}
    if f.score is not None:
        body["score"] = _finite(f.score)
    if f.is_anomaly is not None:
        body["is_anomaly"] = bool(f.is_anomaly)
    return _us(f.window_start, f.source_id), dumps(body)


def event_body(e: Event) -> tuple[int, str]:
    us = _us(e.timestamp, e.kind)
    body = {"event_id": e.event_id, "kind": e.kind, "source_id": e.source_id,
            "timestamp": format_us(us), "severity": e.severity, "details": e.details}
    return us, dumps(body)


class Store:
    """The buffer's tables behind one connection (owned by the writer thread)."""

    def __init__(self, conn: sqlite3.Connection, synchronous: str) -> None:
        self.conn = conn
        self.sync = synchronous.upper()
        self.epoch = schema.epoch(conn)
        self.src_ids: dict[tuple[str, str, str], int] = {}
        self.src_rev: dict[int, tuple[str, str, str]] = {}
        for sid, a, b, c in conn.execute("SELECT id, sensor_id, sensor_type, unit FROM sources"):
            self.src_ids[(a, b, c)] = sid
            self.src_rev[sid] = (a, b, c)
        self.rows = {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                     for t in TABLES}
        self.events_bytes = int(conn.execute(
            "SELECT coalesce(sum(length(body)), 0) + 40 * count(*) FROM events").fetchone()[0])
        self.head_ts: dict[str, int | None] = {t: self._head(t) for t in TABLES}
        self.dropped: dict[int, int] = dict(conn.execute("SELECT src, n FROM dropped").fetchall())
        self.quarantined = int(conn.execute(
            "SELECT count(*) FROM quarantine WHERE requeued_us IS NULL").fetchone()[0])
        self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])

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

    # -- ingest ---------------------------------------------------------------------------
    def source_id(self, key: tuple[str, str, str]) -> int:
        sid = self.src_ids.get(key)
        if sid is None:
            for part in key:
                if not isinstance(part, str):
                    raise TypeError(f"reading source fields must be str, got {key!r}")
            # Own tiny autocommit transaction: the cache never holds a rolled-back id.
            self.conn.execute("INSERT OR IGNORE INTO sources(sensor_id, sensor_type, unit) "
                              "VALUES (?, ?, ?)", key)
            sid = int(self.conn.execute(
                "SELECT id FROM sources WHERE sensor_id=? AND sensor_type=? AND unit=?",
                key).fetchone()[0])
            self.src_ids[key] = sid
            self.src_rev[sid] = key
        return sid

    def convert(self, records: Sequence[object], new_sources: bool = True) -> Converted:
        """Records to rows; raises TypeError/ValueError naming the first bad record.

        With ``new_sources=False`` it touches no SQLite (safe from any thread: the source cache
        is only read) and raises KeyError for a source not seen yet."""
        out = Converted()
        rd, src_ids = out.readings.append, self.src_ids
        source_id = self.source_id if new_sources else self._known_source
        for rec in records:
            if type(rec) is Reading:
                # fast path for the common case (finite float, quality in 0..1); else sanitise
                v, q, ts = rec.value, rec.quality, rec.timestamp
                if not (type(v) is float and v - v == 0.0 and 0.0 <= q <= 1.0
                        and type(ts) is float and 0.0 <= ts < 253402300800.0):
                    rec = rec.sanitised()
                    v, q, ts = rec.value, rec.quality, _us(rec.timestamp, rec.sensor_id) / 1e6
                key = (rec.sensor_id, rec.sensor_type, rec.unit)
                sid = src_ids.get(key)
                if sid is None:
                    sid = source_id(key)
                rd((sid, round(ts * 1_000_000), v, q,
                    dumps(rec.metadata) if rec.metadata else None))
            elif isinstance(rec, Reading):
                self._convert_slow(rec, out, source_id)
            elif isinstance(rec, FeatureVector):
                out.features.append(feature_body(rec))
            elif isinstance(rec, Event):
                out.events.append(event_body(rec))
            else:
                raise TypeError(f"cannot buffer {type(rec).__name__}: expected Reading, "
                                "FeatureVector or Event")
        return out

    def _known_source(self, key: tuple[str, str, str]) -> int:
        return self.src_ids[key]

    @staticmethod
    def _convert_slow(rec: Reading, out: Converted,
                      source_id: Callable[[tuple[str, str, str]], int]) -> None:
        r = rec.sanitised()
        sid = source_id((r.sensor_id, r.sensor_type, r.unit))
        out.readings.append((sid, _us(r.timestamp, r.sensor_id), r.value, r.quality,
                             dumps(r.metadata) if r.metadata else None))

    def insert(self, rows: Converted) -> None:
        with self.tx(full=bool(rows.events)) as c:
            if rows.readings:
                c.executemany("INSERT INTO readings(src, ts, value, quality, meta) "
                              "VALUES (?, ?, ?, ?, ?)", rows.readings)
            if rows.features:
                c.executemany("INSERT INTO features(ts, body) VALUES (?, ?)", rows.features)
            if rows.events:
                c.executemany("INSERT INTO events(ts, body) VALUES (?, ?)", rows.events)
        firsts: dict[str, tuple[int, int]] = {}
        if rows.readings:
            firsts["readings"] = (len(rows.readings), rows.readings[0][1])
        if rows.features:
            firsts["features"] = (len(rows.features), rows.features[0][0])
        if rows.events:
            firsts["events"] = (len(rows.events), rows.events[0][0])
        for table, (n, first_ts) in firsts.items():
            if self.rows[table] == 0:
                self.head_ts[table] = first_ts
            self.rows[table] += n
        self.events_bytes += sum(len(b) + 40 for _, b in rows.events)

    # -- batches --------------------------------------------------------------------------
    def _load(self, bid: int, key: str, attempts: int) -> BatchRows:
        c = self.conn
        b = BatchRows(bid, key, attempts)
        rng = self._ranges(bid)
        b.events = [r[0] for r in c.execute(
            f"SELECT body FROM events WHERE {_MEMBER} ORDER BY id", rng["events"])]
        b.features = [r[0] for r in c.execute(
            f"SELECT body FROM features WHERE {_MEMBER} ORDER BY id", rng["features"])]
        b.readings = c.execute("SELECT src, ts, value, quality, meta FROM readings "
                               f"WHERE {_MEMBER} ORDER BY id", rng["readings"]).fetchall()
        b.sources = {s: self.src_rev[s] for s in {r[0] for r in b.readings}}
        return b

    def _ranges(self, bid: int) -> dict[str, tuple[int, int, int]]:
        row = self.conn.execute("SELECT lo_events, hi_events, lo_features, hi_features, "
                                "lo_readings, hi_readings FROM batches WHERE id = ?",
                                (bid,)).fetchone()
        out = {}
        for i, t in enumerate(TABLES):
            if row is None or row[2 * i] is None:
                out[t] = (-1, -2, bid)  # empty range: no member in this table
            else:
                out[t] = (int(row[2 * i]), int(row[2 * i + 1]), bid)
        return out

    def _new_batch(self, gateway_id: str, members: dict[str, list[int]]) -> tuple[int, str]:
        """A pending batch whose members are ``members[table]`` (ids, ascending)."""
        c = self.conn
        vals: list[int | None] = []
        for t in TABLES:
            ids = members.get(t) or []
            vals += [len(ids)]
        for t in TABLES:
            ids = members.get(t) or []
            vals += [ids[0], ids[-1]] if ids else [None, None]
        cur = c.execute("INSERT INTO batches(key, state, created_us, n_events, n_features, "
                        "n_readings, lo_events, hi_events, lo_features, hi_features, "
                        "lo_readings, hi_readings) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, "
                        "?, ?)", (f"new:{time.time_ns()}", time.time_ns() // 1000, *vals))
        bid = int(cur.lastrowid or 0)
        key = f"{gateway_id}:{self.epoch}:{bid}"
        c.execute("UPDATE batches SET key = ? WHERE id = ?", (key, bid))
        return bid, key

    def pending(self) -> BatchRows | None:
        row = self.conn.execute("SELECT id, key, attempts FROM batches WHERE state = 'pending' "
                                "ORDER BY id LIMIT 1").fetchone()
        return None if row is None else self._load(int(row[0]), str(row[1]), int(row[2]))

    def next_batch(self, gateway_id: str, max_rows: int, max_bytes: int) -> BatchRows | None:
        """The oldest pending batch (resent as is), else a new one assigned durably."""
        pend = self.pending()
        if pend is not None:
            return pend
        c = self.conn
        with self.tx(full=True):
            budget_rows, budget_bytes = max_rows, max_bytes
            picked: dict[str, tuple[int, list[Any]]] = {}
            ids: dict[str, list[int]] = {}
            for table in ("events", "features"):
                if budget_rows <= 0 or budget_bytes <= 0:
                    break
                got: list[Any] = []
                last = 0
                for rid, body in c.execute(f"SELECT id, body FROM {table} WHERE batch IS NULL "
                                           "ORDER BY id LIMIT ?", (budget_rows,)):
                    if got and len(body) + 2 > budget_bytes:
                        budget_bytes = 0
                        break
                    got.append(body)
                    ids.setdefault(table, []).append(rid)
                    last = rid
                    budget_rows -= 1
                    budget_bytes -= len(body) + 2
                if got:
                    picked[table] = (last, got)
            if budget_rows > 0 and budget_bytes > 0:
                rows = c.execute("SELECT id, src, ts, value, quality, meta FROM readings "
                                 "WHERE batch IS NULL ORDER BY id LIMIT ?",
                                 (budget_rows,)).fetchall()
                srcs = self.src_rev
                n = 0
                for row in rows:
                    s = srcs[row[1]]
                    size = _READING_OVERHEAD + len(s[0]) + len(s[1]) + len(s[2]) + len(row[5] or "")
                    if n and size > budget_bytes:
                        break
                    budget_bytes -= size
                    n += 1
                if n:
                    picked["readings"] = (rows[n - 1][0], [r[1:] for r in rows[:n]])
                    ids["readings"] = [r[0] for r in rows[:n]]
            if not picked:
                return None
            bid, key = self._new_batch(gateway_id, ids)
            for table, (last, _) in picked.items():
                c.execute(f"UPDATE {table} SET batch = ? WHERE id <= ? AND batch IS NULL",
                          (bid, last))
        b = BatchRows(bid, key, 0)
        b.events = picked.get("events", (0, []))[1]
        b.features = picked.get("features", (0, []))[1]
        b.readings = picked.get("readings", (0, []))[1]
        b.sources = {s: self.src_rev[s] for s in {r[0] for r in b.readings}}
        return b

    def record_attempt(self, bid: int, status: str) -> None:
        self.conn.execute("UPDATE batches SET attempts = attempts + 1, last_status = ? "
                          "WHERE id = ?", (status, bid))

    def _release(self, bid: int) -> None:
        """Delete a batch's rows (inside a transaction) and keep the counters right."""
        c = self.conn
        rng = self._ranges(bid)
        ev_bytes = c.execute("SELECT coalesce(sum(length(body)), 0) + 40 * count(*) FROM events "
                             f"WHERE {_MEMBER}", rng["events"]).fetchone()[0]
        for table in TABLES:
            n = c.execute(f"DELETE FROM {table} WHERE {_MEMBER}", rng[table]).rowcount
            self.rows[table] -= n
        self.events_bytes -= int(ev_bytes)

    def recount(self) -> None:
        """Re-read the counters (after another connection changed the tables)."""
        c = self.conn
        self.rows = {t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}
        self.events_bytes = int(c.execute(
            "SELECT coalesce(sum(length(body)), 0) + 40 * count(*) FROM events").fetchone()[0])
        self.quarantined = int(c.execute(
            "SELECT count(*) FROM quarantine WHERE requeued_us IS NULL").fetchone()[0])
        self._refresh_heads()

    def _refresh_heads(self) -> None:
        self.head_ts = {t: self._head(t) for t in TABLES}

    def mark_delivered(self, bid: int, status: str) -> None:
        with self.tx(full=True) as c:
            self._release(bid)
            c.execute("UPDATE batches SET state = 'delivered', done_us = ?, last_status = ? "
                      "WHERE id = ? AND state = 'pending'", (time.time_ns() // 1000, status, bid))
            c.execute("DELETE FROM batches WHERE state != 'pending' AND id < ?", (bid - 1000,))
        self._refresh_heads()

    def split(self, bid: int, gateway_id: str) -> bool:
        """Replace a pending batch by two new batches (new keys) holding its halves."""
        c = self.conn
        items: list[tuple[str, int]] = []
        rng = self._ranges(bid)
        for table in TABLES:
            items += [(table, r[0]) for r in c.execute(
                f"SELECT id FROM {table} WHERE {_MEMBER} ORDER BY id", rng[table])]
        if len(items) <= 1:
            return False
        half = len(items) // 2
        with self.tx(full=True):
            for part in (items[:half], items[half:]):
                members = {name: [i for t, i in part if t == name] for name in TABLES}
                new_id, _ = self._new_batch(gateway_id, members)
                for table in TABLES:
                    c.executemany(f"UPDATE {table} SET batch = ? WHERE id = ?",
                                  [(new_id, i) for t, i in part if t == table])
            c.execute("UPDATE batches SET state = 'split', done_us = ? WHERE id = ?",
                      (time.time_ns() // 1000, bid))
        return True

    def quarantine(self, bid: int, key: str, status: int | None, reason: str, body: str,
                   n_rows: int) -> None:
        with self.tx(full=True) as c:
            c.execute("INSERT INTO quarantine(batch_key, created_us, status, reason, body, n_rows)"
                      " VALUES (?, ?, ?, ?, ?, ?)",
                      (key, time.time_ns() // 1000, status, reason, body, n_rows))
            self._release(bid)
            c.execute("UPDATE batches SET state = 'quarantined', done_us = ?, last_status = ? "
                      "WHERE id = ?", (time.time_ns() // 1000, str(status), bid))
        self.quarantined += 1
        self._refresh_heads()

    # -- space ----------------------------------------------------------------------------
    def pages(self) -> tuple[int, int]:
        total = int(self.conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        return total, free

    def used_bytes(self) -> int:
        total, free = self.pages()
        return (total - free) * self.page_size

    def drop_oldest(self, table: str, n: int, older_than_us: int | None = None) -> int:
        """Delete up to ``n`` oldest unassigned rows of readings/features; count per source."""
        c = self.conn
        cond, extra = ("", ()) if older_than_us is None else (" AND ts < ?", (older_than_us,))
        row = c.execute(f"SELECT max(id) FROM (SELECT id FROM {table} WHERE batch IS NULL{cond} "
                        "ORDER BY id LIMIT ?)", (*extra, n)).fetchone()
        if row is None or row[0] is None:
            return 0
        cutoff = int(row[0])
        with self.tx(full=True):
            if table == "readings":
                per_src = c.execute(f"SELECT src, count(*) FROM readings WHERE id <= ? AND "
                                    f"batch IS NULL{cond} GROUP BY src",
                                    (cutoff, *extra)).fetchall()
                for src, k in per_src:
                    self.dropped[src] = self.dropped.get(src, 0) + int(k)
                c.executemany("INSERT INTO dropped(src, n) VALUES (?, ?) ON CONFLICT(src) "
                              "DO UPDATE SET n = n + excluded.n", per_src)
            gone = c.execute(f"DELETE FROM {table} WHERE id <= ? AND batch IS NULL{cond}",
                             (cutoff, *extra)).rowcount
        self.rows[table] -= gone
        self.head_ts[table] = self._head(table)
        return int(gone)

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
            name = self.src_rev.get(src, (f"src{src}", "", ""))[0]
            out[name] = out.get(name, 0) + n
        return out
