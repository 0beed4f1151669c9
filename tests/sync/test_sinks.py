"""Delivery transactions per named sink: each sink sees every row once, independently, across
restarts; a row goes once every consumer of its table has it; outcomes settle as documented."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_agent.backoff import Backoff
from edge_agent.records import Event, FeatureVector, ModelRef
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.delivery import (
    Batch,
    Delivered,
    Outcome,
    Rejected,
    RetryAfter,
    Sink,
    Split,
    Table,
)
from edge_agent.sync.quarantine import list_quarantine
from edge_agent.sync.runner import DeliveryPolicy, SinkRunner
from edge_agent.sync.sinks import SinkHandle
from edge_agent.sync.store import Store

from .conftest import T0, readings

ALL: frozenset[Table] = frozenset(("events", "features", "readings"))
EVENTS: frozenset[Table] = frozenset(("events",))
FAST = DeliveryPolicy(batch_max_rows=40, interval=0.0)


@dataclass
class FakeSink:
    """A sink typed against the protocol: returns scripted outcomes (then Delivered)."""

    name: str
    tables: frozenset[Table]
    script: deque[Outcome] = field(default_factory=deque)
    got: list[Batch] = field(default_factory=list)
    closed: int = 0

    async def deliver(self, batch: Batch) -> Outcome:
        self.got.append(batch)
        return self.script.popleft() if self.script else Delivered()

    async def close(self) -> None:
        self.closed += 1

    def delivered_rows(self) -> list[str]:
        """Every row of every batch answered Delivered, as (kind, identity) strings."""
        return rows_of(self.got)


def rows_of(batches: list[Batch]) -> list[str]:
    out = []
    for b in batches:
        out += ["e:" + json.loads(e)["event_id"] for e in b.events]
        out += ["f:" + json.loads(f)["window_start"] for f in b.features]
        for part in b.readings:
            out += [f"r:{r['sensor_id']}@{r['timestamp']}" for r in json.loads(f"[{part}]")]
    return out


def events(n: int, first: int = 0) -> list[Event]:
    return [Event("anomaly_raised", "pump", T0 + first + i, "warning", {"i": first + i})
            for i in range(n)]


def features(n: int) -> list[FeatureVector]:
    return [FeatureVector("pump", T0 + i, T0 + i + 0.08, {"rms": 0.4}, ModelRef("m", "1"), 0.1,
                          False) for i in range(n)]


def sink_runner(b: Buffer, name: str, tables: frozenset[Table],
                policy: DeliveryPolicy = FAST) -> tuple[FakeSink, SinkRunner]:
    sink = FakeSink(name, tables)
    assert isinstance(sink, Sink)
    return sink, SinkRunner(b.sink(name, tables), sink, policy)


async def test_two_sinks_each_get_every_row_once_rows_go_when_both_have_them(
        buffer: Buffer) -> None:
    up, up_run = sink_runner(buffer, "uploader", ALL)
    alerts, alerts_run = sink_runner(buffer, "alerts", EVENTS)
    await buffer.put([*events(5), *features(3), *readings(100)])
    assert await alerts_run.flush(5.0)
    assert alerts.delivered_rows() == [f"e:{json.loads(e)['event_id']}"
                                       for b in alerts.got for e in b.events]
    assert len(alerts.delivered_rows()) == 5 and all(not b.readings for b in alerts.got)
    # the uploader has none of them yet: everything is still buffered
    assert buffer.stats()["rows_queued"] == {"events": 5, "features": 3, "readings": 100}
    assert await up_run.flush(5.0)
    assert len(up.delivered_rows()) == 108 == len(set(up.delivered_rows()))
    assert buffer.stats()["rows_queued_total"] == 0
    await buffer.put([*events(2, first=10), *readings(10, t0=T0 + 100)])
    assert await up_run.flush(5.0)
    assert buffer.stats()["rows_queued"] == {"events": 2, "features": 0, "readings": 0}
    assert await alerts_run.flush(5.0)
    assert buffer.stats()["rows_queued_total"] == 0
    assert len(alerts.delivered_rows()) == 7 == len(set(alerts.delivered_rows()))
    assert len(up.delivered_rows()) == 120 == len(set(up.delivered_rows()))
    assert {b.key.split(":")[0] for b in alerts.got} == {"alerts"}  # own keys, own batches
    assert not {b.id for b in alerts.got} & {b.id for b in up.got}


async def test_each_sink_resumes_independently_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    a_h, c_h = b.sink("a", ALL), b.sink("c", ALL)
    await b.start()
    await b.put([*events(3), *readings(90)])
    first = await a_h.next_batch(40, 1 << 20)
    assert first is not None
    await a_h.settle(first, Delivered())
    taken = await c_h.next_batch(50, 1 << 20)  # taken (key committed), never settled
    assert taken is not None and taken.attempts == 0
    await b.close()  # the agent stops (or is killed: every step above is committed)
    b2 = Buffer(path, BufferConfig())
    a2, c2 = b2.sink("a", ALL), b2.sink("c", ALL)
    await b2.start()
    again = await c2.next_batch(50, 1 << 20)
    assert again is not None and (again.key, rows_of([again])) == (taken.key, rows_of([taken]))
    got_a: list[Batch] = [first]
    got_c: list[Batch] = []
    for h, got in ((a2, got_a), (c2, got_c)):
        while (batch := await h.next_batch(40, 1 << 20)) is not None:
            got.append(batch)
            await h.settle(batch, Delivered())
    for got in (got_a, got_c):
        rows = rows_of(got)
        assert len(rows) == 93 == len(set(rows))  # every row, exactly once, per sink
    assert b2.stats()["rows_queued_total"] == 0
    await b2.close()


async def test_a_new_sink_sees_the_rows_still_buffered(buffer: Buffer) -> None:
    a = buffer.sink("a", ALL)
    await buffer.put([*events(2), *readings(50)])
    batch = await a.next_batch(30, 1 << 20)  # 2 events, 28 readings: delivered, freed
    assert batch is not None
    await a.settle(batch, Delivered())
    late = buffer.sink("late", ALL)
    got = []
    while (b := await late.next_batch(100, 1 << 20)) is not None:
        got.append(b)
        await late.settle(b, Delivered())
    assert len(rows_of(got)) == 22  # what "a" had not delivered yet, nothing it had
    assert buffer.stats()["rows_queued_total"] == 22  # "a" still needs them


async def test_retry_resends_same_key_and_members_split_and_reject(buffer: Buffer) -> None:
    h = buffer.sink("s", ALL)
    await buffer.put([*events(1), *readings(9)])
    b1 = await h.next_batch(100, 1 << 20)
    assert b1 is not None and b1.n_rows == 10
    await h.settle(b1, RetryAfter("timeout"))
    b1r = await h.next_batch(100, 1 << 20)
    assert b1r is not None and (b1r.key, rows_of([b1r]), b1r.attempts) == (
        b1.key, rows_of([b1]), 1)
    await h.settle(b1r, Split("413", "413"))
    halves = [await h.next_batch(100, 1 << 20)]
    assert halves[0] is not None
    await h.settle(halves[0], Delivered())
    halves.append(await h.next_batch(100, 1 << 20))
    h1, h2 = halves
    assert h1 is not None and h2 is not None
    assert len({b1.key, h1.key, h2.key}) == 3 and (h1.n_rows, h2.n_rows) == (5, 5)
    assert rows_of([h1, h2]) == rows_of([b1])  # same rows, same order, new keys
    await h.settle(h2, Rejected("bad rows", "422"))
    q = list_quarantine(buffer.path)
    assert [(x.batch_key, x.status, x.n_rows, x.reason) for x in q] == [
        (h2.key, 422, 5, "bad rows")]
    ev = await h.next_batch(100, 1 << 20)  # the quarantine event, for every events consumer
    assert ev is not None and [json.loads(e)["kind"] for e in ev.events] == ["batch_quarantined"]
    await h.settle(ev, Split("one row"))  # one row cannot be split: quarantined, not lost
    assert len(list_quarantine(buffer.path)) == 2
    assert buffer.stats()["quarantined"] == 2


async def test_runner_backs_off_with_floor_and_slow_interval_and_resets_on_delivery(
        buffer: Buffer) -> None:
    pol = DeliveryPolicy(interval=0.0, slow_interval=0.3, retry_after_max=0.25)
    sink, run = sink_runner(buffer, "s", ALL, pol)
    sink.script.extend([RetryAfter("http_5xx", after=5.0), RetryAfter("auth", slow=True),
                        RetryAfter("timeout")])
    await buffer.put(readings(5))
    t = time.monotonic()
    assert await run.flush(10.0)
    elapsed = time.monotonic() - t
    # Retry-After 5 s capped at 0.25; the slow interval 0.3; then backoff (>= 0.5 initial/2)
    assert 0.25 + 0.3 + 0.5 <= elapsed < 4.0
    assert len(sink.got) == 4 and len({b.key for b in sink.got}) == 1
    assert run.retrier.failures == 0 and run.retries == {"http_5xx": 1, "auth": 1, "timeout": 1}
    assert run.rows_delivered == 5 and run.state == "sending"


async def test_flush_is_bounded_when_the_peer_keeps_failing(buffer: Buffer) -> None:
    sink, run = sink_runner(buffer, "s", ALL, DeliveryPolicy(
        interval=0.0, backoff=Backoff(initial=0.05, maximum=0.1)))
    sink.script.extend([RetryAfter("connection")] * 1000)
    await buffer.put(readings(5))
    t = time.monotonic()
    assert not await run.flush(0.5)
    assert time.monotonic() - t < 1.0 and run.retrier.failures >= 3
    assert buffer.stats()["rows_queued_total"] == 5
    await run.close()
    assert sink.closed == 1


def test_sink_names_and_tables_are_checked(tmp_path: Path) -> None:
    b = Buffer(tmp_path / "b.db", BufferConfig())
    with pytest.raises(ValueError, match="tables"):
        b.sink("x", frozenset())
    with pytest.raises(ValueError, match="printable"):
        b.sink("has space", ALL)
    h = b.sink("x", ALL)
    assert isinstance(h, SinkHandle) and b.sink("x", ALL) is h
    with pytest.raises(ValueError, match="already registered"):
        b.sink("x", EVENTS)


async def test_rows_in_another_sinks_pending_batch_survive_the_quota(tmp_path: Path) -> None:
    cfg = BufferConfig(max_size=1024**2, reserved_for_events=128 * 1024)
    b = Buffer(tmp_path / "b.db", cfg)
    slow = b.sink("slow", ALL)
    await b.start()
    await b.put(readings(3000, sensor="first"))
    held = await slow.next_batch(3000, 1 << 24)  # in flight while the quota drops
    assert held is not None
    for k in range(40):
        await b.put(readings(6000, sensor=f"s{k % 3}", t0=T0 + 10 + k * 10))
    assert int(b.stats()["dropped_total"]) > 0  # type: ignore[call-overload]
    again = await slow.next_batch(3000, 1 << 24)
    assert again is not None and rows_of([again]) == rows_of([held])  # intact, same key
    await b.close()
    conn = sqlite3.connect(tmp_path / "b.db")
    assert conn.execute("SELECT count(*) FROM batches WHERE state = 'pending'").fetchone()[0] == 1
    conn.close()


async def test_a_failing_buffer_is_retried_never_ends_the_loop(
        buffer: Buffer, monkeypatch: pytest.MonkeyPatch) -> None:
    fails = [2]
    real = Store.next_batch

    def flaky(self: Store, sink: str, prefix: str, max_rows: int, max_bytes: int,
              after: int | None = None) -> Batch | None:
        if fails[0]:
            fails[0] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, sink, prefix, max_rows, max_bytes, after)

    monkeypatch.setattr(Store, "next_batch", flaky)
    _sink, run = sink_runner(buffer, "s", ALL, DeliveryPolicy(
        interval=0.0, backoff=Backoff(initial=0.05, maximum=0.1)))
    await buffer.put(readings(7))
    task = asyncio.create_task(run.run())
    assert await run.wait_until(lambda r: r.rows_delivered == 7, 5)
    assert not task.done() and fails == [0] and "disk is full" in str(run.last_error)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_sink_removed_for_good_is_retired_and_its_rows_freed(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    b = Buffer(path, BufferConfig())
    m = b.sink("mqtt", EVENTS)
    await b.start()
    await b.put([*events(3), *readings(10)])
    assert await m.next_batch(10, 1 << 20) is not None  # in flight when the agent stops
    await b.close()
    b2 = Buffer(path, BufferConfig())  # restarted without the MQTT sink
    a = b2.sink("uploader", ALL)
    await b2.start()
    assert b2.known_sinks == ["mqtt", "uploader"]
    while (batch := await a.next_batch(100, 1 << 20)) is not None:
        await a.settle(batch, Delivered())
    # the mqtt sink's pending batch (same key for when it comes back) still holds its rows
    assert b2.stats()["rows_queued"] == {"events": 3, "features": 0, "readings": 0}
    with pytest.raises(ValueError, match="registered"):
        await b2.retire_sink("uploader")
    await b2.retire_sink("mqtt")
    assert b2.stats()["rows_queued_total"] == 0 and b2.known_sinks == ["uploader"]
    await b2.close()


async def test_after_an_outage_readings_and_features_drain_side_by_side(buffer: Buffer) -> None:
    """A backlog of both kinds: each batch gives feature vectors at most half of its rows while
    readings wait, so readings do not wait for every feature vector (no kind starves); once one
    kind is gone the other takes whole batches."""
    up, run = sink_runner(buffer, "uploader", ALL)
    await buffer.put([*features(200), *readings(400)])
    assert await run.flush(10.0)
    first = up.got[0]
    assert len(first.features) <= 20 and first.n_readings >= 20   # FAST: 40 rows a batch
    mixed = [b for b in up.got if b.features and b.n_readings]
    assert len(mixed) >= 5
    assert len(up.delivered_rows()) == 600 == len(set(up.delivered_rows()))
