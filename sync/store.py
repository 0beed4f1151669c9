"""Synchronous SQL operations of the buffer, run only by the buffer's single writer thread.

Nothing here is thread-safe on purpose: one :class:`Store` owns one connection and is used from
one thread. Every multi-statement change is one ``BEGIN IMMEDIATE … COMMIT`` transaction;
changes that must survive a power cut (events, batch bookkeeping) commit at ``synchronous=FULL``.

Each registered sink has its own cursors (:class:`.storebase.Cursors`) and its own batches.
Readings are packed (schema v2, :mod:`.pack`): chunks in id order form one sequence; a batch's
readings are a contiguous slice ``(lo chunk, offset) .. (hi chunk, end)`` of it. Events and
features of a batch are an id range (ids are never reused). A sink settles its batches strictly
oldest first, so everything before its oldest pending batch (or its cursor) is delivered by it;
a row is deleted once every registered sink that consumes its table is past it
(:meth:`.storebase.StoreBase._free`), unless another sink's pending batch holds it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from edge_agent.sync.delivery import Batch

from .convert import Converted
from .pack import chunk_rows, unpack, unpack_idx, wire
from .run import Key
from .storebase import TABLES, Cursors, Pos, StoreBase

__all__ = ["TABLES", "Pos", "Store"]
log = logging.getLogger(__name__)
# Share of a batch (rows and bytes) feature vectors may take while readings wait as well.
FEATURE_SHARE = 0.5
_RANGE = "id BETWEEN ? AND ?"
_EMPTY = (-1, -2)
RSlice = tuple[Pos, Pos, int]  # first position, end position, number of readings


class Store(StoreBase):
    """The buffer's tables behind one connection (owned by the writer thread)."""

    # The sources of the last commit and their ids (a source's id never changes): the next
    # commit usually has the same ones, the same tuples even (compared in C, by identity).
    _last: tuple[list[Key], list[int]] = ([], [])

    def insert(self, rows: Converted) -> None:
        run = rows.readings
        if run.table == self._last[0]:
            ids = self._last[1]
        else:
            got = list(map(self.src_ids.get, run.table))
            ids = cast(list[int], got) if None not in got else list(map(self.source_id,
                                                                        run.table))
            self._last = (list(run.table), ids)
        chunks = chunk_rows(run, ids) if len(run) else []
        gate = self.gate_rows(run, ids) if chunks else []
        with self.tx(full=bool(rows.events)) as c:
            if chunks:
                c.executemany("INSERT INTO readings(n, ts, ts_max, size, srcs, idx, body) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)", chunks)
            self.write_gate(gate)
            if rows.features:
                c.executemany("INSERT INTO features(ts, body) VALUES (?, ?)", rows.features)
            if rows.events:
                c.executemany("INSERT INTO events(ts, body) VALUES (?, ?)", rows.events)
        self.lag.observe(run.us)
        firsts: dict[str, tuple[int, int]] = {}
        if chunks:
            firsts["readings"] = (sum(ch[0] for ch in chunks), chunks[0][1])
        if rows.features:
            firsts["features"] = (len(rows.features), rows.features[0][0])
        if rows.events:
            firsts["events"] = (len(rows.events), rows.events[0][0])
        for table, (n, first_ts) in firsts.items():
            if self.rows[table] == 0:
                self.head_ts[table] = first_ts
            self.rows[table] += n
        self.rtotal += firsts.get("readings", (0, 0))[0]
        self.events_bytes += sum(len(b) + 40 for _, b in rows.events)

    def last_timestamps(self) -> dict[str, int]:
        """The newest reading timestamp (µs) ever committed per sensor_id."""
        out: dict[str, int] = {}
        for sensor, us in self.conn.execute(
                "SELECT s.sensor_id, g.us FROM gate g JOIN sources s ON s.id = g.src"):
            out[sensor] = max(int(us), out.get(sensor, 0))
        return out

    # -- sinks ----------------------------------------------------------------------------
    def register(self, sink: str, tables: frozenset[str]) -> None:
        """Make ``sink`` a consumer of ``tables`` for this run. A new sink starts with the
        rows still buffered; a known one resumes at its cursors (or the buffered head)."""
        head = self.rhead()
        cur = self.cursors.get(sink)
        spec = ",".join(sorted(tables))
        with self.tx(full=True) as c:
            if cur is None:
                cur = Cursors(0, 0, head)
                c.execute("INSERT INTO sinks(name, tables, ev, ft, rc, ro, created_us) VALUES "
                          "(?, ?, 0, 0, ?, ?, ?)", (sink, spec, *head, time.time_ns() // 1000))
            else:
                cur = Cursors(cur.ev, cur.ft, max(cur.r, head))
                c.execute("UPDATE sinks SET tables = ?, rc = ?, ro = ? WHERE name = ?",
                          (spec, *cur.r, sink))
        self.cursors[sink] = cur
        self.consumers[sink] = frozenset(tables)

    def retire(self, sink: str) -> None:
        """Forget a sink that is gone for good: its cursors and its pending batches (whose rows
        it would otherwise hold for ever); frees what the registered sinks have delivered."""
        with self._guard(sink), self.tx(full=True) as c:
            c.execute("DELETE FROM batches WHERE sink = ? AND state = 'pending'", (sink,))
            c.execute("DELETE FROM sinks WHERE name = ?", (sink,))
            self.cursors.pop(sink, None)
            self._free()
        self._refresh_heads()

    # -- batches --------------------------------------------------------------------------
    def _batch_row(self, bid: int) -> tuple[Any, ...]:
        row = self.conn.execute(
            "SELECT lo_events, hi_events, lo_features, hi_features, lo_readings, lo_off, "
            "hi_readings, hi_end FROM batches WHERE id = ?", (bid,)).fetchone()
        return tuple(row) if row is not None else (None,) * 8

    def _ranges(self, bid: int) -> dict[str, tuple[int, int]]:
        row = self._batch_row(bid)
        return {t: _EMPTY if row[2 * i] is None else (int(row[2 * i]), int(row[2 * i + 1]))
                for i, t in enumerate(("events", "features"))}

    def _slice(self, bid: int) -> tuple[Pos, Pos] | None:
        row = self._batch_row(bid)
        if row[4] is None:
            return None
        return (int(row[4]), int(row[5] or 0)), (int(row[6]), int(row[7]))

    def _read_slice(self, lo: Pos, hi: Pos) -> list[str]:
        out = []
        for cid, n, srcs, idx, body in self.conn.execute(
                "SELECT id, n, srcs, idx, body FROM readings WHERE id BETWEEN ? AND ? "
                "ORDER BY id", (lo[0], hi[0])):
            a = lo[1] if cid == lo[0] else 0
            b = hi[1] if cid == hi[0] else n
            if b <= a:
                continue
            tails = unpack(body).split("\n")
            ix = unpack_idx(idx, n)
            if a > 0 or b < n:
                tails, ix = tails[a:b], ix[a:b]
            out.append(wire(self.prefixes(srcs), ix, tails))
        return out

    def _load(self, sink: str, bid: int, key: str, attempts: int, n_readings: int) -> Batch:
        c = self.conn
        rng = self._ranges(bid)
        sl = self._slice(bid)
        return Batch(
            sink, bid, key, attempts,
            events=[r[0] for r in c.execute(
                f"SELECT body FROM events WHERE {_RANGE} ORDER BY id", rng["events"])],
            features=[r[0] for r in c.execute(
                f"SELECT body FROM features WHERE {_RANGE} ORDER BY id", rng["features"])],
            readings=self._read_slice(*sl) if sl is not None else [], n_readings=n_readings)

    def _new_batch(self, sink: str, prefix: str, members: dict[str, list[int]],
                   rslice: RSlice | None) -> tuple[int, str]:
        """A pending batch of ``sink``: event/feature ids ``members`` (ascending, each list
        one id range of the table) and a reading slice."""
        vals: list[int | None] = [len(members.get(t) or []) for t in ("events", "features")]
        vals.append(rslice[2] if rslice else 0)
        for t in ("events", "features"):
            ids = members.get(t) or []
            vals += [ids[0], ids[-1]] if ids else [None, None]
        vals += [rslice[0][0], rslice[0][1], rslice[1][0], rslice[1][1]] if rslice else [None] * 4
        cur = self.conn.execute(
            "INSERT INTO batches(sink, key, state, created_us, n_events, n_features, n_readings,"
            " lo_events, hi_events, lo_features, hi_features, lo_readings, lo_off, hi_readings,"
            " hi_end) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sink, f"new:{time.time_ns()}", time.time_ns() // 1000, *vals))
        bid = int(cur.lastrowid or 0)
        key = f"{prefix}:{self.epoch}:{bid}"
        self.conn.execute("UPDATE batches SET key = ? WHERE id = ?", (key, bid))
        return bid, key

    def pending(self, sink: str, after: int | None = None) -> Batch | None:
        """The sink's oldest pending batch (with ``after``: the oldest one after ``after``)."""
        row = self.conn.execute("SELECT id, key, attempts, n_readings FROM batches WHERE "
                                "state = 'pending' AND sink = ? AND id > ? ORDER BY id LIMIT 1",
                                (sink, -1 if after is None else after)).fetchone()
        return None if row is None else self._load(sink, int(row[0]), str(row[1]), int(row[2]),
                                                   int(row[3]))

    def next_batch(self, sink: str, prefix: str, max_rows: int, max_bytes: int,
                   after: int | None = None) -> Batch | None:
        """The sink's oldest pending batch (resent as is), else a new one assigned durably.

        ``after``: the batch currently in flight; a batch prepared while it is in flight comes
        after it (and is never sent before it is settled)."""
        pend = self.pending(sink, after)
        if pend is not None:
            return pend
        c, tables, cur = self.conn, self.consumers[sink], self.cursors[sink]
        with self._guard(sink), self.tx(full=True):
            budget_rows, budget_bytes = max_rows, max_bytes
            picked: dict[str, list[str]] = {}
            ids: dict[str, list[int]] = {}
            # Events first (few, and what the control room waits for). Feature vectors take at
            # most FEATURE_SHARE of a batch while readings wait too, so after an outage
            # neither kind drains only after the other (no kind starves).
            share = FEATURE_SHARE if "readings" in tables and self._readings_after(cur.r) else 1.0
            for table, after_id in (("events", cur.ev), ("features", cur.ft)):
                if budget_rows <= 0 or budget_bytes <= 0 or table not in tables:
                    continue
                cap_rows = budget_rows if table == "events" else max(1, int(budget_rows * share))
                cap_bytes = budget_bytes if table == "events" else int(budget_bytes * share)
                for rid, body in c.execute(f"SELECT id, body FROM {table} WHERE id > ? "
                                           "ORDER BY id LIMIT ?", (after_id, cap_rows)):
                    if ids and len(body) + 2 > cap_bytes:
                        break
                    picked.setdefault(table, []).append(body)
                    ids.setdefault(table, []).append(rid)
                    budget_rows -= 1
                    budget_bytes -= len(body) + 2
                    cap_bytes -= len(body) + 2
            rslice, rnext, readings = None, cur.r, []
            if budget_rows > 0 and budget_bytes > 0 and "readings" in tables:
                took = self._take(cur.r, budget_rows, budget_bytes, not picked)
                if took is not None:
                    rslice, rnext = took
                    readings = self._read_slice(rslice[0], rslice[1])
            if not picked and rslice is None:
                return None
            bid, key = self._new_batch(sink, prefix, ids, rslice)
            self._move(sink, Cursors((ids.get("events") or [cur.ev])[-1],
                                     (ids.get("features") or [cur.ft])[-1], rnext))
        return Batch(sink, bid, key, 0, picked.get("events", []), picked.get("features", []),
                     readings, rslice[2] if rslice else 0)

    def _readings_after(self, at: Pos) -> bool:
        """Readings wait beyond position ``at`` (a sink's reading cursor)."""
        return self.conn.execute("SELECT 1 FROM readings WHERE id > ? OR (id = ? AND n > ?) "
                                 "LIMIT 1", (at[0], at[0], at[1])).fetchone() is not None

    def _take(self, at: Pos, max_rows: int, max_bytes: int,
              need_one: bool) -> tuple[RSlice, Pos] | None:
        """The next slice of readings from ``at`` (≤ max_rows, ≈ ≤ max_bytes) and the cursor
        after it."""
        cid, off = at
        lo: Pos | None = None
        end: Pos = (cid, off)
        n_total = end_n = 0
        for rid, n, size in self.conn.execute(
                "SELECT id, n, size FROM readings WHERE id >= ? ORDER BY id", (cid,)):
            start = off if rid == cid else 0
            avail = n - start
            if avail <= 0:
                continue
            per = size / n
            fit = min(avail, max_rows, int(max_bytes // per) if per > 0 else avail)
            if fit <= 0 and (n_total or not need_one):
                break
            fit = max(fit, 1)
            if lo is None:
                lo = (rid, start)
            end, end_n = (rid, start + fit), n
            n_total += fit
            max_rows -= fit
            max_bytes -= int(per * fit)
            if fit < avail or max_rows <= 0 or max_bytes <= 0:
                break
        if lo is None:
            return None
        return (lo, end, n_total), (end if end[1] < end_n else (end[0] + 1, 0))

    def record_attempt(self, bid: int, status: str) -> None:
        self.conn.execute("UPDATE batches SET attempts = attempts + 1, last_status = ? "
                          "WHERE id = ?", (status, bid))

    def _settled(self, bid: int, state: str, status: str) -> None:
        c = self.conn
        c.execute("UPDATE batches SET state = ?, done_us = ?, last_status = ? WHERE id = ? AND "
                  "state = 'pending'", (state, time.time_ns() // 1000, status, bid))
        self._free()
        c.execute("DELETE FROM batches WHERE state != 'pending' AND id < ?", (bid - 1000,))

    def delivered(self, bid: int, status: str) -> None:
        """Record the answer and mark the batch delivered; free what nobody needs any more."""
        with self.tx(full=True):
            self.record_attempt(bid, status)
            self._settled(bid, "delivered", status)
        self._refresh_heads()

    def quarantine(self, bid: int, key: str, status: str, reason: str, body: str,
                   n_rows: int) -> None:
        code = int(status) if status.isdigit() else None
        with self.tx(full=True) as c:
            self.record_attempt(bid, status)
            c.execute("INSERT INTO quarantine(batch_key, created_us, status, reason, body, n_rows)"
                      " VALUES (?, ?, ?, ?, ?, ?)",
                      (key, time.time_ns() // 1000, code, reason, body, n_rows))
            self._settled(bid, "quarantined", status)
        self.quarantined += 1
        self._refresh_heads()

    def retry(self, sink: str, bid: int, status: str) -> None:
        """Record a failed attempt; batches prepared after it (never sent) are dissolved, so
        what was committed meanwhile (e.g. events raised during an outage) is not stuck behind
        a stale batch."""
        with self._guard(sink), self.tx(full=True):
            self.record_attempt(bid, status)
            self._dissolve_after(sink, bid)

    def _dissolve_after(self, sink: str, bid: int) -> None:
        """Give the rows of the sink's never-sent pending batches after ``bid`` back (inside
        a transaction): only the oldest pending batch is ever sent, so their keys were never
        used."""
        c = self.conn
        later = c.execute("SELECT id, attempts FROM batches WHERE state = 'pending' AND sink = ? "
                          "AND id > ? ORDER BY id", (sink, bid)).fetchall()
        if not later:
            return
        if any(int(a) for _, a in later):  # cannot happen (see above); never risk a resend
            log.error("pending batches after an unsettled one were already attempted: "
                      "not dissolved", extra={"sink": sink, "batch_id": bid})
            return
        cur = self.cursors[sink]
        ev, ft, r = cur.ev, cur.ft, cur.r
        for other, _ in reversed(later):
            rng, sl = self._ranges(other), self._slice(other)
            if rng["events"] != _EMPTY:
                ev = rng["events"][0] - 1
            if rng["features"] != _EMPTY:
                ft = rng["features"][0] - 1
            if sl is not None:
                r = sl[0]
            c.execute("DELETE FROM batches WHERE id = ?", (other,))
        self._move(sink, Cursors(ev, ft, r))

    def split(self, sink: str, bid: int, prefix: str, status: str) -> bool:
        """Replace a pending batch by two new batches (new keys) holding its halves; False
        (nothing changed) for a batch of one row."""
        c = self.conn
        rng = self._ranges(bid)
        items: list[tuple[str, int]] = []
        for table in ("events", "features"):
            items += [(table, r[0]) for r in c.execute(
                f"SELECT id FROM {table} WHERE {_RANGE} ORDER BY id", rng[table])]
        sl = self._slice(bid)
        n_read = 0
        chunks: list[tuple[int, int]] = []
        if sl is not None:
            (lo, lo_off), (hi, hi_end) = sl
            for cid, n in c.execute("SELECT id, n FROM readings WHERE id BETWEEN ? AND ? "
                                    "ORDER BY id", (lo, hi)):
                a = lo_off if cid == lo else 0
                b = hi_end if cid == hi else n
                if b > a:
                    chunks.append((cid, b - a))
                    n_read += b - a
        total = len(items) + n_read
        if total <= 1:
            return False
        half = total // 2
        with self._guard(sink), self.tx(full=True):
            self.record_attempt(bid, status)
            self._dissolve_after(sink, bid)  # the halves go before anything prepared after bid
            parts = [items[:half], items[half:]]
            slices: list[RSlice | None] = [None, None]
            if sl is not None:
                k = half - len(items)  # readings in the first half (may be <= 0)
                if k <= 0:
                    slices[1] = (sl[0], sl[1], n_read)
                else:
                    mid = self._pos(sl[0], chunks, k)
                    slices = [(sl[0], mid, k), (mid, sl[1], n_read - k)]
            for part, rs in zip(parts, slices, strict=True):
                members = {t: [i for tt, i in part if tt == t] for t in ("events", "features")}
                if part or rs:
                    self._new_batch(sink, prefix, members, rs)
            c.execute("UPDATE batches SET state = 'split', done_us = ?, last_status = ? "
                      "WHERE id = ?", (time.time_ns() // 1000, status, bid))
        return True

    @staticmethod
    def _pos(lo: Pos, chunks: list[tuple[int, int]], k: int) -> Pos:
        """The position ``k`` readings after ``lo`` (chunks: (id, readings in the slice))."""
        for cid, m in chunks:
            start = lo[1] if cid == lo[0] else 0
            if k < m:
                return (cid, start + k)
            k -= m
            if k == 0:
                return (cid, start + m)
        raise ValueError("position beyond the slice")
