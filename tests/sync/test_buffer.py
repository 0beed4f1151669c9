"""Buffer: group commit, acknowledgement, bad input, corruption, quotas, disk errors."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.records import Event, FeatureVector, ModelRef, Reading, ReadingBlock, Sensor
from edge_agent.settings import ConfigError, parse
from edge_agent.sync import schema
from edge_agent.sync.buffer import Buffer, BufferClosed, BufferConfig, BufferUnavailable
from edge_agent.sync.store import Store

from .conftest import T0, db_rows, readings, stored_readings


def event_kinds(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [json.loads(b)["kind"] for (b,) in conn.execute("SELECT body FROM events")]
    finally:
        conn.close()


def scribble(path: Path) -> None:
    """Overwrite b-tree pages in the middle of the file with random bytes."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(8192))


def test_config_builds_from_toml_table() -> None:
    cfg = parse(BufferConfig, {"max_size": "512MiB", "max_age": "7d", "commit_interval": "2ms",
                               "synchronous": "full"})
    assert cfg.max_size == 512 * 1024**2 and cfg.max_age == 7 * 86400
    assert cfg.commit_interval == pytest.approx(0.002)
    with pytest.raises(ConfigError, match="reserved_for_events"):
        parse(BufferConfig, {"max_size": "2MiB", "reserved_for_events": "4MiB"})
    with pytest.raises(ConfigError, match="synchronous"):
        parse(BufferConfig, {"synchronous": "off"})


async def test_put_commits_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(100))
    # acknowledged means committed: another connection sees the rows right away
    assert db_rows(path) == 100
    await b.put([Event("anomaly_raised", "pump-02", T0, "warning", {"score": 0.3}),
                 FeatureVector("pump-02", T0, T0 + 0.08, {"rms": 0.4}, ModelRef("m", "4"), -0.1,
                               False)])
    st = b.stats()
    assert st["rows_queued"] == {"events": 1, "features": 1, "readings": 100}
    assert float(st["oldest_unsent_age_s"]) > 0  # type: ignore[arg-type]
    await b.close()
    b2 = Buffer(path, BufferConfig())
    await b2.start()
    assert b2.stats()["rows_queued_total"] == 102
    await b2.close()


async def test_group_commit_shares_transactions(buffer: Buffer) -> None:
    await asyncio.gather(*(buffer.put(readings(10, sensor=f"s{i}")) for i in range(200)))
    st = buffer.stats()
    assert st["rows_committed"] == 2000
    assert int(st["commits"]) < 50  # type: ignore[call-overload]


async def test_many_sources_small_commits_pack_into_one_row_per_commit(buffer: Buffer) -> None:
    """The PLC pattern (many tags, one value each per poll): one chunk row per commit, a few
    bytes per reading, and the readings come back exactly as put, in order."""
    put = [Reading(f"plc.tag{i:03d}", "pressure", 1.5 + i, "bar", T0, metadata={"node": f"n{i}"})
           for i in range(200)]
    for k in range(20):
        await buffer.put([Reading(r.sensor_id, r.sensor_type, r.value, r.unit, T0 + k,
                                  metadata=r.metadata) for r in put])
    chunks, n, size = await buffer.call(lambda s: s.conn.execute(
        "SELECT count(*), sum(n), sum(length(body)) FROM readings").fetchone())
    assert chunks == 20 and n == 4000 and size / n < 20
    rows = await buffer.call(lambda s: stored_readings(s.conn))
    assert [(r["sensor_id"], r["value"], r["metadata"]["node"]) for r in rows[:200]] == [
        (r.sensor_id, r.value, r.metadata["node"]) for r in put]


async def test_non_finite_values_never_stored_as_numbers(buffer: Buffer) -> None:
    await buffer.put([Reading("s", "t", float("nan"), "u", T0),
                      Reading("s", "t", float("inf"), "u", T0 + 1)])
    rows = await buffer.call(lambda s: stored_readings(s.conn))
    assert [(r["value"], r["quality"]) for r in rows] == [(None, 0.0), (None, 0.0)]
    assert "non-finite" in rows[0]["metadata"]["reason"]


async def test_bad_records_fail_their_put_only(buffer: Buffer) -> None:
    good = buffer.put(readings(5))
    bad = buffer.put([Reading("s", "t", 1.0, "u", float("nan"))])
    worse = buffer.put(["not a record"])  # type: ignore[list-item]
    res = await asyncio.gather(good, bad, worse, return_exceptions=True)
    assert res[0] is None
    assert isinstance(res[1], ValueError) and "timestamp" in str(res[1])
    assert isinstance(res[2], ValueError) and "str" in str(res[2])
    assert buffer.stats()["rows_queued_total"] == 5
    deep: dict[str, object] = {}
    for _ in range(100_000):
        deep = {"x": deep}
    circular: dict[str, object] = {}
    circular["self"] = circular
    for details in (deep, circular):  # serialized by the writer: it must survive them
        with pytest.raises(ValueError, match="not buffered"):
            await buffer.put([Event("k", "s", T0, "info", details)])
    await buffer.put(readings(1, t0=T0 + 50))
    assert buffer.stats()["rows_queued_total"] == 6


async def test_garbage_file_is_moved_aside_with_event(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not a database\n" * 500)
    b = Buffer(path, BufferConfig())
    await b.start()
    moved = b.stats()["moved_aside"]
    assert isinstance(moved, list) and len(moved) == 1
    kept = await asyncio.to_thread(Path(moved[0]).read_bytes)
    assert kept.startswith(b"this is not a database")  # kept, not deleted
    await b.put(readings(3))
    await b.close()
    assert "buffer_corrupt_moved_aside" in event_kinds(path)
    assert db_rows(path) == 3


async def test_corrupt_page_after_crash_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(20000))
    await b.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '0' WHERE key = 'clean'")  # as after a kill -9
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    scribble(path)
    b2 = Buffer(path, BufferConfig())
    await b2.start()
    assert len(b2.stats()["moved_aside"]) == 1  # type: ignore[arg-type]
    assert b2.stats()["rows_queued"]["events"] == 1  # type: ignore[index]
    await b2.close()


async def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    conn.close()
    before = path.read_bytes()
    b = Buffer(path, BufferConfig())
    with pytest.raises(schema.SchemaTooNew):
        await b.start()
    assert path.read_bytes() == before


async def test_size_quota_drops_oldest_readings_keeps_events(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    # packed readings take ~6 bytes each: 240k readings overflow 1 MiB
    cfg = BufferConfig(max_size=1024**2, reserved_for_events=128 * 1024,
                       quota_policy="drop_oldest")  # the thinning default: tests/sync/test_quota
    b = Buffer(path, cfg)
    await b.start()
    await b.put([Event("anomaly_raised", "pump", T0, "critical", {"n": i}) for i in range(50)])
    for k in range(40):
        await b.put(readings(6000, sensor=f"s{k % 3}", t0=T0 + k * 10))
    st = b.stats()
    dropped = st["dropped_total"]
    assert isinstance(dropped, int) and dropped > 0
    by = st["dropped_by_sensor"]
    assert isinstance(by, dict) and sum(by.values()) == dropped
    assert int(st["bytes_queued"]) <= cfg.max_size  # type: ignore[call-overload]
    assert st["rows_queued"]["events"] >= 50  # type: ignore[index]
    oldest = await b.call(lambda s: s.conn.execute("SELECT min(ts) FROM readings").fetchone()[0])
    assert oldest > int(T0 * 1e6)  # the oldest readings went first
    assert set(by) == {"s0", "s1", "s2"}  # counted per sensor
    await b.close()
    kinds = event_kinds(path)
    assert kinds.count("anomaly_raised") == 50 and "buffer_quota_drop" in kinds
    assert path.stat().st_size <= cfg.max_size * 1.2


async def test_file_shrinks_after_drain(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig(housekeeping_interval=0.05))
    await b.start()
    await b.put(readings(400_000))  # packed: ~2.5 MB
    await b.call(lambda s: s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
    big = path.stat().st_size
    await b.call(lambda s: s.conn.execute("DELETE FROM readings"))
    await b.call(lambda s: s.recount())
    await b.put(readings(1, t0=T0 + 1000))  # wakes the writer; housekeeping is due
    await asyncio.sleep(0.2)  # housekeeping_interval elapses while idle
    await b.close()
    assert path.stat().st_size < big / 4, (big, path.stat().st_size)


async def test_age_quota(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig(max_age=3600, housekeeping_interval=0.05))
    await b.start()
    import time
    now = time.time()
    await b.put(readings(100, sensor="old", t0=now - 7200))
    await b.put(readings(100, sensor="new", t0=now))
    await b.put([Event("anomaly_raised", "x", now - 7200)])  # events are never dropped by age
    await asyncio.sleep(0.2)
    await b.put(readings(1, sensor="new", t0=now + 1))
    st = b.stats()
    assert st["dropped_by_sensor"] == {"old": 100}
    assert st["rows_queued"]["readings"] == 101  # type: ignore[index]
    await b.close()


async def test_disk_full_keeps_running_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(5000))
    pages = await b.call(lambda s: s.pages()[0])
    await b.call(lambda s: s.conn.execute(f"PRAGMA max_page_count = {pages + 2}"))
    # this put does not fit: SQLITE_FULL -> event, oldest readings dropped, retried, committed
    await asyncio.wait_for(b.put(readings(3000, sensor="late", t0=T0 + 100)), 20)
    st = b.stats()
    assert int(st["disk_errors"]) >= 1  # type: ignore[call-overload]
    assert int(st["dropped_total"]) > 0  # type: ignore[call-overload]
    await b.call(lambda s: s.conn.execute("PRAGMA max_page_count = 1073741823"))
    await b.put(readings(10, sensor="after", t0=T0 + 200))
    await b.close()
    kinds = event_kinds(path)
    assert {"buffer_disk_error", "buffer_quota_drop", "buffer_disk_recovered"} <= set(kinds)
    conn = sqlite3.connect(path)
    late = sum(r["sensor_id"] == "late" for r in stored_readings(conn))
    conn.close()
    assert late == 3000  # the acknowledged put is all there


@pytest.mark.timeout(20)  # before the fix, close() never returned
async def test_close_while_the_disk_keeps_failing_returns_and_fails_the_puts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(10, sensor="before"))

    def broken(self: Store, rows: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "insert", broken)
    puts = [asyncio.create_task(b.put(readings(5, sensor=f"lost{i}", t0=T0 + i)))
            for i in range(2)]
    await asyncio.sleep(0.5)  # the writer is retrying: the puts wait (back-pressure)
    assert not any(p.done() for p in puts)
    cpu = time.process_time()
    await asyncio.wait_for(b.close(), 5)  # before: spun at 100 % CPU forever
    assert time.process_time() - cpu < 3
    for p in puts:
        with pytest.raises(BufferClosed, match="disk I/O error"):
            await p
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    got = {r["sensor_id"] for r in stored_readings(conn)}
    conn.close()
    assert got == {"before"}  # nothing acknowledged that was not committed, nothing lost


@pytest.mark.parametrize("how", ["read_only", "wal_is_a_directory"])
async def test_unwritable_existing_database_is_not_moved_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Root-owned files after a ``sudo edge-agent run`` (tests run as root, so: SQLite's own
    read-only open, or a -wal that cannot be opened) are unavailable, not corrupt: start fails
    with one clear OSError and every buffered row stays where it is."""
    path = tmp_path / "buffer.db"
    b = Buffer(path, BufferConfig())
    await b.start()
    await b.put(readings(100))
    await b.close()
    if how == "read_only":
        real = sqlite3.connect

        def ro(p: str, *a: Any, **k: Any) -> sqlite3.Connection:
            if str(p) == str(path):
                return real(f"file:{p}?mode=ro", *a, uri=True, **k)
            return real(p, *a, **k)

        monkeypatch.setattr(schema.sqlite3, "connect", ro)
    else:
        (tmp_path / "buffer.db-wal").mkdir()
    b2 = Buffer(path, BufferConfig())
    with pytest.raises(BufferUnavailable, match=f"{path}.*(READONLY|CANTOPEN)") as info:
        await b2.start()
    assert isinstance(info.value, OSError)  # the agent's start catches OSError
    assert b2.moved_aside == []
    assert not [n for n in os.listdir(tmp_path) if "corrupt" in n]
    monkeypatch.undo()
    if how == "wal_is_a_directory":
        (tmp_path / "buffer.db-wal").rmdir()  # the cause fixed: everything is still there
    assert db_rows(path) == 100


async def test_a_big_reading_block_commits_without_lingering(tmp_path: Path) -> None:
    """A group counts a block by its rows: one put of a 2,000-row block is big enough to commit
    at once, as 2,000 single readings are, instead of waiting ``commit_interval`` for more."""
    b = Buffer(tmp_path / "b.db", BufferConfig(commit_interval=1.0))
    await b.start()
    try:
        s = Sensor("press-07.oil_temp", "temperature", "degC", {})
        n = 2000
        block = ReadingBlock([s] * n, [20.0 + i for i in range(n)],
                             [T0 + i * 0.001 for i in range(n)], [1.0] * n)
        t = time.monotonic()
        await b.put([block])
        assert time.monotonic() - t < 0.5
        assert db_rows(tmp_path / "b.db") == n
    finally:
        await b.close()
