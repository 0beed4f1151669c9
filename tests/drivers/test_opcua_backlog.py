"""The session's pending batch is bounded when the consumer stalls (drop oldest, counted)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import numpy as np
import pytest
from asyncua import Client, ua

from edge_agent.drivers import opcua_session
from edge_agent.drivers.base import DriverHealth
from edge_agent.drivers.opcua import Config
from edge_agent.drivers.opcua_session import Session
from edge_agent.records import Reading, ReadingBlock, WaveformBlock, expand
from edge_agent.settings import parse


def session() -> tuple[Session, DriverHealth]:
    cfg = parse(Config, {"kind": "opcua", "name": "ua", "endpoint": "opc.tcp://127.0.0.1:4840",
                         "nodes": [{"sensor_id": "t", "node_id": "ns=2;s=T"},
                                   {"sensor_id": "vib", "node_id": "ns=2;s=V", "waveform": True,
                                    "sample_rate": 10240.0}]})
    health = DriverHealth("ua", "opcua")
    # the client is never used by _push / next_batch; the session only sets a callback on it
    return Session(cfg, Client(cfg.endpoint), health), health


def block(i: int, n: int = 1024) -> WaveformBlock:
    return WaveformBlock("vib", 10240.0, ("x",), 1000.0 + i * n / 10240.0,
                         np.full((n, 1), float(i)), "g", {})


async def test_stalled_consumer_keeps_newest_records_and_counts_drops() -> None:
    s, health = session()
    assert s.pending_max == 1000
    for i in range(5000):
        s._push(Reading("t", "temperature", float(i), "C", 1000.0 + i))
    assert len(s._pending) == 1000
    assert health.errors["dropped_backlog"] == 4000
    assert health.snapshot()["dropped_backlog"] == 4000
    got = await s.next_batch()
    assert [r.value for r in got if isinstance(r, Reading)] == [float(i) for i in range(4000, 5000)]
    s._push(Reading("t", "temperature", 1.0, "C", 2000.0))         # fresh after draining
    assert len(await s.next_batch()) == 1 and health.errors["dropped_backlog"] == 4000


async def test_waveform_backlog_is_bounded_by_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opcua_session, "PENDING_MAX_SAMPLES", 100 * 1024)
    s, health = session()
    for i in range(300):
        s._push(block(i))
    assert s._pending_values <= 100 * 1024 and len(s._pending) == 100
    assert health.errors["dropped_backlog"] == 200
    got = await s.next_batch()
    assert [int(b.samples[0, 0]) for b in got if isinstance(b, WaveformBlock)] == list(
        range(200, 300))
    assert s._pending_values == 0
    # a single block larger than the budget is still delivered (never an empty queue)
    s._push(block(0, n=200 * 1024))
    assert len(await s.next_batch()) == 1


async def test_good_scalar_values_travel_as_one_block_bounded_like_readings() -> None:
    """Plain Good values become rows of one reading block (no Reading each); the rows are
    bounded by the same backlog limit, oldest dropped and counted; anything else (a Bad
    status, the Overflow bit) still goes the Reading way with its status in metadata."""
    s, health = session()
    item = next(it for it in s._items if it.spec.sensor_id == "t")
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(1500):
        s.deliver(item, ua.DataValue(ua.Variant(float(i)), SourceTimestamp=cast(
            ua.DateTime, t0 + timedelta(milliseconds=i))))
    overflow = ua.StatusCode(ua.UInt32(0x0480))  # Good, InfoType DataValue, Overflow bit
    s.deliver(item, ua.DataValue(ua.Variant(7.0), StatusCode=overflow,
                                 SourceTimestamp=cast(ua.DateTime, t0)))
    assert health.errors["dropped_backlog"] == 500
    got = await s.next_batch()
    blocks = [b for b in got if isinstance(b, ReadingBlock)]
    assert len(blocks) == 1 and blocks[0].values == [float(i) for i in range(500, 1500)]
    assert blocks[0].timestamps[0] == (t0 + timedelta(milliseconds=500)).timestamp()
    assert blocks[0].row(0).metadata == {"source": "opcua", "node": "ns=2;s=T",
                                         "status": "Good", "ts_source": "source"}
    singles = [r for r in got if isinstance(r, Reading)]
    assert [r.value for r in singles] == [7.0] and health.detail["overflows"] == {"t": 1}


async def test_values_keep_their_order_around_other_records() -> None:
    """A value that came after a Good row (here a Bad one, as a Reading) stays after it: the
    rows so far are closed into a block before it, so "the last value of t" is the last one."""
    s, _ = session()
    item = next(it for it in s._items if it.spec.sensor_id == "t")
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    bad = ua.StatusCode(ua.UInt32(0x80000000))  # Bad
    good = ua.StatusCode(ua.UInt32(0))
    for i, status in enumerate([good, good, bad, good]):
        s.deliver(item, ua.DataValue(ua.Variant(float(i)), StatusCode=status, SourceTimestamp=cast(
            ua.DateTime, t0 + timedelta(milliseconds=i))))
    got = await s.next_batch()
    assert [type(r).__name__ for r in got] == ["ReadingBlock", "Reading", "ReadingBlock"]
    assert [r.value for r in expand(got)] == [0.0, 1.0, None, 3.0]


async def test_a_non_finite_value_is_a_bad_value_not_a_good_row() -> None:
    s, health = session()
    item = next(it for it in s._items if it.spec.sensor_id == "t")
    stamp = cast(ua.DateTime, datetime(2026, 12, 1, tzinfo=UTC))
    for v in (float("nan"), float("inf")):
        s.deliver(item, ua.DataValue(ua.Variant(v), SourceTimestamp=stamp))
    assert health.errors["bad_value"] == 2 and "t" in health.bad_points
    got = await s.next_batch()
    assert not any(isinstance(r, ReadingBlock) for r in got)
    assert [r.value for r in got if isinstance(r, Reading)] == [None, None]
