"""Synchronous SQL operations of the buffer, run only by the buffer's single writer thread.

Nothing here is thread-safe on purpose: one :class:`Store` owns one connection and is used from
one thread. Every multi-statement change is one ``BEGIN IMMEDIATE … COMMIT`` transaction;
changes that must survive a power cut (events, batch bookkeeping) commit at ``synchronous=FULL``.

Readings are packed (schema v2, :mod:`.pack`): chunks in id order form one sequence; a batch's
readings are a contiguous slice ``(lo chunk, offset) .. (hi chunk, end)`` of it, and the
``rcursor`` (kept in ``meta``) is where the next batch starts. Since batches are sent and settled
strictly oldest first, every chunk before the oldest pending slice is delivered and gone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .convert import Converted
from .pack import chunk_rows, unpack, unpack_idx, wire
from .storebase import TABLES, Pos, StoreBase

__all__ = ["TABLES", "BatchRows", "Pos", "Store"]
log = logging.getLogger(__name__)
_MEMBER = "id BETWEEN ? AND ? AND batch = ?"


@dataclass
class BatchRows:
    """One batch as stored: its key and exact membership, in send order."""

    id: int
    key: str
    attempts: int
    events: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    readings: list[str] = field(default_factory=list)  # wire form of each chunk's part
    n_readings: int = 0

    @property
    def n_rows(self) -> int:
        return len(self.events) + len(self.features) + self.n_readings


class Store(StoreBase):
    """The buffer's tables behind one connection (owned by the writer thread)."""

    def insert(self, rows: Converted) -> None:
        chunks = chunk_rows(rows.readings, self.source_id) if len(rows.readings) else []
        with self.tx(full=bool(rows.events)) as c:
            if chunks:
                c.executemany("INSERT INTO readings(n, ts, ts_max, size, srcs, idx, body) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)", chunks)
            if rows.features:
                c.executemany("INSERT INTO features(ts, body) VALUES (?, ?)", rows.features)
            if rows.events:
                c.executemany("INSERT INTO events(ts, body) VALUES (?, ?)", rows.events)
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
        self.events_bytes += sum(len(b) + 40 for _, b in rows.events)

    # -- batches --------------------------------------------------------------------------
    def _batch_row(self, bid: int) -> tuple[Any, ...]:
        row = self.conn.execute(
            "SELECT lo_events, hi_events, lo_features, hi_features, lo_readings, lo_off, "
            "hi_readings, hi_end FROM batches WHERE id = ?", (bid,)).fetchone()
        return tuple(row) if row is not None else (None,) * 8

    def _ranges(self, bid: int) -> dict[str, tuple[int, int, int]]:
        row = self._batch_row(bid)
        out = {}
        for i, t in enumerate(("events", "features")):
            if row[2 * i] is None:
                out[t] = (-1, -2, bid)  # empty range: no member in this table
            else:
                out[t] = (int(row[2 * i]), int(row[2 * i + 1]), bid)
        return out

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

    def _load(self, bid: int, key: str, attempts: int, n_readings: int) -> BatchRows:
        c = self.conn
        b = BatchRows(bid, key, attempts, n_readings=n_readings)
        rng = self._ranges(bid)
        b.events = [r[0] for r in c.execute(
            f"SELECT body FROM events WHERE {_MEMBER} ORDER BY id", rng["events"])]
        b.features = [r[0] for r in c.execute(
            f"SELECT body FROM features WHERE {_MEMBER} ORDER BY id", rng["features"])]
        sl = self._slice(bid)
        if sl is not None:
            b.readings = self._read_slice(*sl)
        return b

    def _new_batch(self, gateway_id: str, members: dict[str, list[int]],
                   rslice: tuple[Pos, Pos, int] | None) -> tuple[int, str]:
        """A pending batch of event/feature ids ``members`` (ascending) and a reading slice."""
        vals: list[int | None] = []
        for t in ("events", "features"):
            ids = members.get(t) or []
            vals += [len(ids)]
        vals.append(rslice[2] if rslice else 0)
        for t in ("events", "features"):
            ids = members.get(t) or []
            vals += [ids[0], ids[-1]] if ids else [None, None]
        if rslice:
            vals += [rslice[0][0], rslice[0][1], rslice[1][0], rslice[1][1]]
        else:
            vals += [None, None, None, None]
        cur = self.conn.execute(
            "INSERT INTO batches(key, state, created_us, n_events, n_features, n_readings, "
            "lo_events, hi_events, lo_features, hi_features, lo_readings, lo_off, hi_readings, "
            "hi_end) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (f"new:{time.time_ns()}", time.time_ns() // 1000, *vals))
        bid = int(cur.lastrowid or 0)
        key = f"{gateway_id}:{self.epoch}:{bid}"
        self.conn.execute("UPDATE batches SET key = ? WHERE id = ?", (key, bid))
        for t in ("events", "features"):
            ids = members.get(t) or []
            if ids:
                self.conn.executemany(f"UPDATE {t} SET batch = ? WHERE id = ?",
                                      [(bid, i) for i in ids])
        return bid, key

    def pending(self, after: int | None = None) -> BatchRows | None:
        """The oldest pending batch (with ``after``: the oldest one after batch ``after``)."""
        row = self.conn.execute("SELECT id, key, attempts, n_readings FROM batches WHERE "
                                "state = 'pending' AND id > ? ORDER BY id LIMIT 1",
                                (-1 if after is None else after,)).fetchone()
        return None if row is None else self._load(int(row[0]), str(row[1]), int(row[2]),
                                                   int(row[3]))

    def next_batch(self, gateway_id: str, max_rows: int, max_bytes: int,
                   after: int | None = None) -> BatchRows | None:
        """The oldest pending batch (resent as is), else a new one assigned durably.

        ``after``: the batch currently in flight; a batch prepared while it is in flight comes
        after it (and is never sent before it is settled)."""
        pend = self.pending(after)
        if pend is not None:
            return pend
        c = self.conn
        with self.tx(full=True):
            budget_rows, budget_bytes = max_rows, max_bytes
            picked: dict[str, list[str]] = {}
            ids: dict[str, list[int]] = {}
            for table in ("events", "features"):
                if budget_rows <= 0 or budget_bytes <= 0:
                    break
                for rid, body in c.execute(f"SELECT id, body FROM {table} WHERE batch IS NULL "
                                           "ORDER BY id LIMIT ?", (budget_rows,)):
                    if ids and len(body) + 2 > budget_bytes:
                        budget_bytes = 0
                        break
                    picked.setdefault(table, []).append(body)
                    ids.setdefault(table, []).append(rid)
                    budget_rows -= 1
                    budget_bytes -= len(body) + 2
            rslice, readings, n_read = None, [], 0
            if budget_rows > 0 and budget_bytes > 0:
                rslice = self._take(budget_rows, budget_bytes, not picked)
                if rslice is not None:
                    readings = self._read_slice(rslice[0], rslice[1])
                    n_read = rslice[2]
            if not picked and rslice is None:
                return None
            bid, key = self._new_batch(gateway_id, ids, rslice)
        b = BatchRows(bid, key, 0, picked.get("events", []), picked.get("features", []),
                      readings, n_read)
        return b

    def _take(self, max_rows: int, max_bytes: int, need_one: bool) -> tuple[Pos, Pos, int] | None:
        """Assign the next slice of readings (≤ max_rows, ≈ ≤ max_bytes); moves the cursor."""
        cid, off = self.cursor()
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
        self._set_cursor(end if end[1] < end_n else (end[0] + 1, 0))
        return lo, end, n_total

    def record_attempt(self, bid: int, status: str) -> None:
        self.conn.execute("UPDATE batches SET attempts = attempts + 1, last_status = ? "
                          "WHERE id = ?", (status, bid))

    def _release(self, bid: int) -> None:
        """Delete a batch's rows (inside a transaction) and keep the counters right."""
        c = self.conn
        rng = self._ranges(bid)
        ev_bytes = c.execute("SELECT coalesce(sum(length(body)), 0) + 40 * count(*) FROM events "
                             f"WHERE {_MEMBER}", rng["events"]).fetchone()[0]
        for table in ("events", "features"):
            n = c.execute(f"DELETE FROM {table} WHERE {_MEMBER}", rng[table]).rowcount
            self.rows[table] -= n
        self.events_bytes -= int(ev_bytes)
        sl = self._slice(bid)
        if sl is not None:
            (lo, _), (hi, end) = sl
            # batches settle oldest first: every chunk ending inside this slice is all delivered
            c.execute("DELETE FROM readings WHERE id >= ? AND id < ?", (lo, hi))
            c.execute("DELETE FROM readings WHERE id = ? AND n <= ?", (hi, end))
            self.rows["readings"] -= int(c.execute(
                "SELECT n_readings FROM batches WHERE id = ?", (bid,)).fetchone()[0])

    def mark_delivered(self, bid: int, status: str) -> None:
        with self.tx(full=True) as c:
            self._release(bid)
            c.execute("UPDATE batches SET state = 'delivered', done_us = ?, last_status = ? "
                      "WHERE id = ? AND state = 'pending'", (time.time_ns() // 1000, status, bid))
            c.execute("DELETE FROM batches WHERE state != 'pending' AND id < ?", (bid - 1000,))
        self._refresh_heads()

    def _dissolve_after(self, bid: int) -> None:
        """Give the rows of never-sent pending batches after ``bid`` back to the queue.

        Only the oldest pending batch is ever sent, so the ones after the batch being settled
        were prepared in advance and never sent: their keys were never used."""
        c = self.conn
        later = c.execute("SELECT id, attempts FROM batches WHERE state = 'pending' AND id > ? "
                          "ORDER BY id", (bid,)).fetchall()
        if any(int(a) for _, a in later):  # cannot happen (see above); never risk a resend
            log.error("pending batches after %s were already attempted: not dissolved", bid)
            return
        cursor: Pos | None = None
        for other, _ in later:
            rng = self._ranges(other)
            for table in ("events", "features"):
                c.execute(f"UPDATE {table} SET batch = NULL WHERE {_MEMBER}", rng[table])
            sl = self._slice(other)
            if sl is not None and cursor is None:
                cursor = sl[0]
            c.execute("DELETE FROM batches WHERE id = ?", (other,))
        if cursor is not None:
            self._set_cursor(cursor)

    def dissolve_after(self, bid: int) -> None:
        with self.tx(full=True):
            self._dissolve_after(bid)

    def split(self, bid: int, gateway_id: str) -> bool:
        """Replace a pending batch by two new batches (new keys) holding its halves."""
        c = self.conn
        rng = self._ranges(bid)
        items: list[tuple[str, int]] = []
        for table in ("events", "features"):
            items += [(table, r[0]) for r in c.execute(
                f"SELECT id FROM {table} WHERE {_MEMBER} ORDER BY id", rng[table])]
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
        with self.tx(full=True):
            self._dissolve_after(bid)  # the halves go before anything prepared after bid
            parts = [items[:half], items[half:]]
            slices: list[tuple[Pos, Pos, int] | None] = [None, None]
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
                    self._new_batch(gateway_id, members, rs)
            c.execute("UPDATE batches SET state = 'split', done_us = ? WHERE id = ?",
                      (time.time_ns() // 1000, bid))
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
