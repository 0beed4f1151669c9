"""Schema migration v1 (one row per reading) → v2 (packed chunks): nothing lost, a pending batch
keeps its key and exactly its rows, everything is delivered once afterwards."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from edge_agent.records import format_us
from edge_agent.sync import schema
from edge_agent.sync.buffer import Buffer, BufferConfig
from tests.receiver import IngestReceiver

from .conftest import T0, Running, fast_uploader_cfg

US0 = int(T0 * 1_000_000)


def make_v1(path: Path) -> str:
    """A v1 database as an agent of the previous version leaves it after a crash: a pending
    batch (already sent once) of 300 readings, 700 unassigned readings of 3 sources interleaved,
    one with metadata and one null value, a feature vector and an event. Returns the key."""
    conn = schema.connect(str(path))
    conn.execute("BEGIN")
    schema.MIGRATIONS[0][1](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.executemany("INSERT INTO sources(id, sensor_id, sensor_type, unit) VALUES (?, ?, ?, ?)",
                     [(i + 1, f"s{i}", "temperature", "degC") for i in range(3)])
    rows = []
    for j in range(1000):
        meta = '{"node":"ns=2;s=X"}' if j == 5 else None
        value, quality = (None, 0.0) if j == 7 else (20.0 + j * 0.25, 1.0)
        if j == 7:
            meta = '{"reason":"no value"}'
        rows.append((j + 1, j % 3 + 1, US0 + j * 1000, value, quality, meta,
                     1 if j < 300 else None))
    conn.executemany("INSERT INTO readings(id, src, ts, value, quality, meta, batch) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    key = "gw-test:" + schema.epoch(conn) + ":1"
    conn.execute("INSERT INTO batches(id, key, state, created_us, attempts, n_readings, "
                 "n_features, n_events, lo_readings, hi_readings) VALUES "
                 "(1, ?, 'pending', 0, 1, 300, 0, 0, 1, 300)", (key,))
    conn.execute("INSERT INTO features(ts, body) VALUES (?, ?)", (US0, '{"source_id":"p",'
                 f'"window_start":"{format_us(US0)}","window_end":"{format_us(US0 + 1)}",'
                 '"values":{"rms":0.5}}'))
    conn.execute("INSERT INTO events(ts, body) VALUES (?, ?)", (US0, '{"event_id":"e1",'
                 f'"kind":"k","source_id":"x","timestamp":"{format_us(US0)}",'
                 '"severity":"info","details":{}}'))
    conn.close()
    return key


async def test_v1_database_migrates_and_delivers_exactly_once(tmp_path: Path,
                                                              rx: IngestReceiver) -> None:
    path = tmp_path / "buffer.db"
    key = make_v1(path)
    b = Buffer(path, BufferConfig())
    await b.start()
    assert b.stats()["rows_queued"] == {"events": 1, "features": 1, "readings": 1000}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST == 4
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'readings_v1'"
                        ).fetchone()[0] == 0
    conn.close()
    async with Running(b, fast_uploader_cfg(rx.url, batch_max_rows=400)) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 1002, 20)
    first = rx.requests[0]
    assert first.idempotency_key == key and first.n_readings == 300  # the same batch, resent
    assert first.batch_seq == 1 and first.n_events == 0
    assert rx.duplicates == 0 and rx.conflicts == 0 and rx.rows_stored == 1002
    assert len(rx.readings) == 1000
    for j in range(1000):
        r = rx.readings[(format_us(US0 + j * 1000), f"s{j % 3}")]
        if j == 7:
            assert r["value"] is None and r["quality"] == 0 and r["metadata"]["reason"]
        else:
            assert r["value"] == 20.0 + j * 0.25 and r["quality"] == 1.0
    assert rx.readings[(format_us(US0 + 5000), "s2")]["metadata"] == {"node": "ns=2;s=X"}
    assert b.stats()["rows_queued_total"] == 0
    await b.close()


async def test_pending_batch_already_stored_counts_delivered(tmp_path: Path,
                                                             rx: IngestReceiver) -> None:
    """The v1 agent's batch was stored but the answer was lost; after the upgrade the same
    key is resent and the receiver answers duplicate_ignored: nothing is stored twice."""
    path = tmp_path / "buffer.db"
    key = make_v1(path)
    with rx.cond:
        rx.idempotency[key] = ("orig", 1e18)
    b = Buffer(path, BufferConfig())
    await b.start()
    async with Running(b, fast_uploader_cfg(rx.url, batch_max_rows=400)) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 1002, 20)
        assert up.sent["duplicate"] == 1
    assert len(rx.readings) == 700 and rx.conflicts == 0
    await b.close()


def make_v2(path: Path) -> str:
    """A v2 database as the previous agent leaves it: a pending batch (sent once) of 2 events,
    1 feature vector and the first 300 readings of a chunk; unassigned: 1 event, 1 feature
    vector, the chunk's other 700 readings and a second chunk of 500. Returns the key."""
    from edge_agent.sync.pack import Packer, Run, chunk_rows

    conn = schema.connect(str(path))
    for ver, step in schema.MIGRATIONS[:2]:
        conn.execute("BEGIN")
        step(conn)
        conn.execute(f"PRAGMA user_version = {ver}")
        conn.execute("COMMIT")
    conn.executemany("INSERT INTO sources(id, sensor_id, sensor_type, unit) VALUES (?, ?, ?, ?)",
                     [(i + 1, f"s{i}", "temperature", "degC") for i in range(3)])
    packer = Packer()
    for first, n in ((0, 1000), (1000, 500)):
        run = Run()
        for j in range(first, first + n):
            us = US0 + j * 1000
            run.add(packer.fragment(20.0 + j * 0.25, us, 1.0, None), us,
                    (f"s{j % 3}", "temperature", "degC"))
        conn.executemany("INSERT INTO readings(n, ts, ts_max, size, srcs, idx, body) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         chunk_rows(run, [int(k[0][1]) + 1 for k in run.table]))
    for i in range(3):
        conn.execute("INSERT INTO events(ts, body, batch) VALUES (?, ?, ?)", (US0, (
            f'{{"event_id":"e{i}","kind":"k","source_id":"x","timestamp":"{format_us(US0)}",'
            '"severity":"info","details":{}}'), 1 if i < 2 else None))
    for i in range(2):
        ws = format_us(US0 + i)
        conn.execute("INSERT INTO features(ts, body, batch) VALUES (?, ?, ?)", (
            US0 + i, f'{{"source_id":"p","window_start":"{ws}","window_end":"{ws}",'
            '"values":{"rms":0.5}}', 1 if i == 0 else None))
    key = "gw-test:" + schema.epoch(conn) + ":1"
    conn.execute("INSERT INTO batches(id, key, state, created_us, attempts, n_readings, "
                 "n_features, n_events, lo_events, hi_events, lo_features, hi_features, "
                 "lo_readings, lo_off, hi_readings, hi_end) VALUES "
                 "(1, ?, 'pending', 0, 1, 300, 1, 2, 1, 2, 1, 1, 1, 0, 1, 300)", (key,))
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rcursor', '1:300')")
    conn.close()
    return key


async def test_v2_database_migrates_to_sinks_and_delivers_exactly_once(
        tmp_path: Path, rx: IngestReceiver) -> None:
    path = tmp_path / "buffer.db"
    key = make_v2(path)
    b = Buffer(path, BufferConfig())
    await b.start()
    assert b.stats()["rows_queued"] == {"events": 3, "features": 2, "readings": 1500}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    assert [r[1] for r in conn.execute("PRAGMA table_info(events)")] == ["id", "ts", "body"]
    assert conn.execute("SELECT name, ev, ft, rc, ro FROM sinks").fetchall() == [
        ("uploader", 2, 1, 1, 300)]
    conn.close()
    async with Running(b, fast_uploader_cfg(rx.url, batch_max_rows=400)) as up:
        assert await up.wait_until(lambda u: u.rows_sent == 1505, 20)
    first = rx.requests[0]
    assert first.idempotency_key == key and first.batch_seq == 1  # the same batch, resent
    assert (first.n_events, first.n_features, first.n_readings) == (2, 1, 300)
    assert first.first_reading == (format_us(US0), "s0")
    assert rx.requests[1].n_events == 1 and rx.requests[1].n_features == 1
    assert rx.duplicates == 0 and rx.conflicts == 0 and rx.rows_stored == 1505
    assert len(rx.readings) == 1500 and b.stats()["rows_queued_total"] == 0
    await b.close()


def make_v3(path: Path) -> str:
    """A v3 database: the uploader's pending batch (sent once) holds feature 1; features 2 and
    3 are unassigned, 1 and 2 are old. Returns the batch's key."""
    conn = schema.connect(str(path))
    for ver, step in schema.MIGRATIONS[:3]:
        conn.execute("BEGIN")
        step(conn)
        conn.execute(f"PRAGMA user_version = {ver}")
        conn.execute("COMMIT")
    for i, us in enumerate((US0, US0 + 1, int(time.time() * 1e6))):
        ws = format_us(us)
        conn.execute("INSERT INTO features(ts, body) VALUES (?, ?)", (us, (
            f'{{"source_id":"p{i}","window_start":"{ws}","window_end":"{ws}",'
            '"values":{"rms":0.5}}')))
    key = "gw-test:" + schema.epoch(conn) + ":1"
    conn.execute("INSERT INTO batches(id, sink, key, state, created_us, attempts, n_readings, "
                 "n_features, n_events, lo_features, hi_features) VALUES "
                 "(1, 'uploader', ?, 'pending', 0, 1, 0, 1, 0, 1, 1)", (key,))
    conn.execute("UPDATE sinks SET ft = 1")
    conn.close()
    return key


async def test_v3_database_gets_kind_counters_and_keeps_pending_rows(
        tmp_path: Path, rx: IngestReceiver) -> None:
    path = tmp_path / "buffer.db"
    key = make_v3(path)
    cfg = BufferConfig(max_age=1800.0, housekeeping_interval=0.1)
    b = Buffer(path, cfg)
    await b.start()
    for _ in range(100):  # housekeeping drops the old unassigned feature, not the pending one
        if b.stats()["dropped_total"]:
            break
        await asyncio.sleep(0.05)
    assert b.stats()["dropped_by_kind"] == {"readings": {}, "features": {"p1": 1}}
    await b.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    assert conn.execute("SELECT id FROM features ORDER BY id").fetchall() == [(1,), (3,)]
    conn.close()
    b = Buffer(path, cfg)  # the counters persist
    await b.start()
    assert b.stats()["dropped_by_kind"] == {"readings": {}, "features": {"p1": 1}}
    async with Running(b, fast_uploader_cfg(rx.url)) as up:
        assert await up.wait_until(lambda u: b.stats()["rows_queued_total"] == 0, 20)
    assert rx.requests[0].idempotency_key == key and rx.requests[0].n_features == 1
    assert sum(r.n_features for r in rx.requests) == 2  # 1 and 3, each once
    assert rx.duplicates == 0 and rx.conflicts == 0
    assert [e["kind"] for e in rx.events.values()] == ["buffer_quota_drop"]
    await b.close()
