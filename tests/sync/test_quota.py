"""A buffer under pressure keeps what matters: the issue's quota campaign, scaled down.

The receiver is down for a simulated 10-hour outage; 4 sensors read at 1 Hz and 2 vibration
sources give a feature vector every 10 s, into a 1 MiB quota (~6x too small). With the default
policy (thin) raw readings and features from across the whole outage stay, thinned evenly, with
every dropped row counted per sensor and kind, and one ``buffer_quota_drop`` event for the whole
run (at most one per minute). The previous policy (drop_oldest) loses the first hours.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

from edge_agent.records import FeatureVector, Reading
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.delivery import Delivered
from edge_agent.sync.sinks import SinkHandle
from tests.receiver import IngestReceiver

from .conftest import Running, fast_uploader_cfg, stored_readings

HOURS = 10
SENSORS = [f"press-{i}.temp" for i in range(4)]
SOURCES = ["pump-1.de_accel", "pump-2.de_accel"]
T0 = float(int(time.time()) - HOURS * 3600 - 60)


def minute(m: int, rng: random.Random) -> list[Reading | FeatureVector]:
    t = T0 + m * 60
    out: list[Reading | FeatureVector] = [
        Reading(s, "temperature", round(rng.gauss(60, 2), 3), "degC", t + i)
        for i in range(60) for s in SENSORS]
    for j in range(6):
        for src in SOURCES:
            out.append(FeatureVector(src, t + j * 10, t + j * 10 + 1,
                                     {f"f{k}": rng.random() for k in range(24)}))
    return out


def us_of(ts: str) -> int:
    from datetime import datetime
    return round(datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() * 1e6)


def hour_of(ts: str) -> int:
    return int((us_of(ts) / 1e6 - T0) // 3600)


async def campaign(tmp_path: Path, policy: str, hours: int = HOURS
                   ) -> tuple[Buffer, Path, float]:
    path = tmp_path / "b.db"
    cfg = BufferConfig(max_size=1024**2, reserved_for_events=128 * 1024,
                       housekeeping_interval=0.1, commit_interval=0,
                       quota_policy=policy)  # type: ignore[arg-type]
    b = Buffer(path, cfg)
    await b.start()
    rng = random.Random(3)
    t_start = time.monotonic()
    for m in range(hours * 60):
        await b.put(minute(m, rng))
    return b, path, time.monotonic() - t_start


def hours_kept(conn: sqlite3.Connection) -> tuple[dict[str, Counter[int]], dict[str, Counter[int]]]:
    readings: dict[str, Counter[int]] = {s: Counter() for s in SENSORS}
    for r in stored_readings(conn):
        readings[r["sensor_id"]][hour_of(r["timestamp"])] += 1
    features: dict[str, Counter[int]] = {s: Counter() for s in SOURCES}
    for (body,) in conn.execute("SELECT body FROM features"):
        f = json.loads(body)
        features[f["source_id"]][hour_of(f["window_start"])] += 1
    return readings, features


async def test_thinning_keeps_the_whole_outage_with_counters_and_one_event(
        tmp_path: Path) -> None:
    b, path, took = await campaign(tmp_path, "thin")
    st = b.stats()
    assert int(st["bytes_queued"]) <= 1024**2  # type: ignore[call-overload]
    n_drop_events = await b.call(lambda s: s.conn.execute(
        "SELECT count(*) FROM events WHERE body LIKE '%\"buffer_quota_drop\"%'").fetchone()[0])
    assert took < 60 and n_drop_events == 1  # at most one per minute (the run took < 1 min)
    conn = sqlite3.connect(path)
    readings, features = hours_kept(conn)
    conn.close()
    # raw readings and features of every hour of the outage are still there, thinned evenly
    for s in SENSORS:
        per_hour = [readings[s][h] for h in range(HOURS)]
        assert min(per_hour) >= 3600 // 64, (s, per_hour)  # never thinner than thin_max (64)
        assert max(per_hour) <= 5 * min(per_hour), (s, per_hour)  # evenly
    for src in SOURCES:
        per_hour = [features[src][h] for h in range(HOURS)]
        assert min(per_hour) >= 360 // 64 and max(per_hour) <= 5 * min(per_hour), (
            src, per_hour)
    assert st["dropped_thinned"] == st["dropped_total"] == kinds_total(st)  # no span deleted
    # counted per sensor and per kind: what is kept + what was dropped = what was put
    kinds = st["dropped_by_kind"]
    assert isinstance(kinds, dict)
    for s in SENSORS:
        assert sum(readings[s].values()) + kinds["readings"][s] == HOURS * 3600
    for src in SOURCES:
        assert sum(features[src].values()) + kinds["features"][src] == HOURS * 360
    assert st["dropped_total"] == sum(kinds["readings"].values()) + sum(
        kinds["features"].values())
    # once the receiver is back everything kept is delivered, exactly once
    with IngestReceiver(api_key="test-key-123") as rx:
        async with Running(b, fast_uploader_cfg(rx.url, batch_max_rows=5000)) as up:
            kept = sum(sum(c.values()) for c in readings.values())
            nfeat = sum(sum(c.values()) for c in features.values())
            assert await up.wait_until(lambda u: len(rx.readings) == kept
                                       and len(rx.features) == nfeat, 30)
        assert rx.duplicates == 0 and rx.conflicts == 0
    await b.close()
    assert (await_counts(path)["features"]) == kinds["features"]  # persistent across restarts


def kinds_total(st: dict[str, object]) -> int:
    kinds = st["dropped_by_kind"]
    assert isinstance(kinds, dict)
    return sum(sum(v.values()) for v in kinds.values())


def await_counts(path: Path) -> dict[str, dict[str, int]]:
    conn = sqlite3.connect(path)
    try:
        out: dict[str, dict[str, int]] = {}
        for kind, source, n in conn.execute("SELECT kind, source, n FROM dropped_kind"):
            out.setdefault(kind, {})[source] = n
        return out
    finally:
        conn.close()


async def test_drop_oldest_policy_loses_the_first_hours(tmp_path: Path) -> None:
    b, path, _ = await campaign(tmp_path, "drop_oldest", hours=4)  # ~2 MB into 1 MiB
    await b.close()
    conn = sqlite3.connect(path)
    readings, _ = hours_kept(conn)
    conn.close()
    assert all(readings[s][0] == 0 for s in SENSORS)  # what the default policy avoids


async def test_thinning_works_for_one_reading_per_sensor_per_commit(tmp_path: Path) -> None:
    """A PLC poller commits one reading of each tag per poll: each chunk holds every sensor
    once, so thinning must work across chunks (they are merged, then every k-th kept)."""
    path = tmp_path / "b.db"
    cfg = BufferConfig(max_size=1024**2, reserved_for_events=64 * 1024,
                       housekeeping_interval=0.1, commit_interval=0)
    b = Buffer(path, cfg)
    await b.start()
    rng = random.Random(5)
    tags = [f"plc.tag{i}" for i in range(100)]
    polls = 2400  # 40 simulated minutes, one poll per second (~1.7 MB packed)
    for p in range(polls):
        await b.put([Reading(t, "gauge", round(rng.gauss(0, 1), 4), "bar", T0 + p)
                     for t in tags])
    st = b.stats()
    await b.close()
    assert int(st["dropped_total"]) > 0  # type: ignore[call-overload]
    assert st["dropped_thinned"] == st["dropped_total"]  # thinned, nothing dropped whole
    conn = sqlite3.connect(path)
    first = Counter(r["sensor_id"] for r in stored_readings(conn)
                    if us_of(r["timestamp"]) < (T0 + 600) * 1e6)  # the first 10 minutes
    conn.close()
    assert set(first) == set(tags) and min(first.values()) >= 600 // 64, first


async def drain(h: SinkHandle) -> tuple[Counter[tuple[str, str]], int]:
    """Take and deliver every batch of sink ``h``: (readings received, feature vectors)."""
    got: Counter[tuple[str, str]] = Counter()
    nfeat = 0
    while (batch := await h.next_batch(5000, 1 << 24)) is not None:
        for chunk in batch.readings:
            got.update((r["sensor_id"], r["timestamp"]) for r in json.loads(f"[{chunk}]"))
        nfeat += len(batch.features)
        await h.settle(batch, Delivered(note="test"))
    return got, nfeat


async def test_thinning_never_touches_rows_handed_to_a_sink(tmp_path: Path) -> None:
    """Two sinks: ``fast`` has taken the first 20 minutes in one pending batch, ``slow`` the
    first 1000 readings. Thinning rewrites only what no sink has been handed: both pending
    batches come back identical (key and rows), the handed-out span keeps every reading, and
    afterwards each sink gets every kept reading exactly once (kept + counted = put)."""
    path = tmp_path / "b.db"
    cfg = BufferConfig(max_size=1024**2, reserved_for_events=128 * 1024,
                       housekeeping_interval=0.1, commit_interval=0)
    b = Buffer(path, cfg)
    fast = b.sink("fast", ("features", "readings"))
    slow = b.sink("slow", ("features", "readings"))
    await b.start()
    rng = random.Random(9)
    for m in range(20):
        await b.put(minute(m, rng))
    fast_b = await fast.next_batch(100_000, 1 << 26)
    slow_b = await slow.next_batch(1000, 1 << 26)
    assert fast_b is not None and slow_b is not None
    assert fast_b.n_readings == 20 * 60 * len(SENSORS) and slow_b.n_rows == 1000
    for m in range(20, 300):  # ~3 MB more into 1 MiB
        await b.put(minute(m, rng))
    st = b.stats()
    assert int(st["dropped_thinned"]) > 0  # type: ignore[call-overload]
    assert st["dropped_thinned"] == st["dropped_total"]
    again_fast = await fast.next_batch(100_000, 1 << 26)
    again_slow = await slow.next_batch(1000, 1 << 26)
    assert again_fast == fast_b and again_slow == slow_b  # same key, same rows
    conn = sqlite3.connect(path)
    early = Counter(r["sensor_id"] for r in stored_readings(conn)
                    if hour_of(r["timestamp"]) == 0 and us_of(r["timestamp"]) < (T0 + 1200) * 1e6)
    conn.close()
    assert all(early[s] == 20 * 60 for s in SENSORS), early  # the handed-out span is whole
    kinds = st["dropped_by_kind"]
    assert isinstance(kinds, dict)
    for h in (fast, slow):
        got, nfeat = await drain(h)
        assert all(v == 1 for v in got.values())  # exactly once
        per = Counter(s for s, _ in got)
        for s in SENSORS:
            assert per[s] + kinds["readings"][s] == 300 * 60, (h.name, s, per[s])
        assert nfeat + sum(kinds["features"].values()) == 300 * 6 * len(SOURCES)
    await b.close()
