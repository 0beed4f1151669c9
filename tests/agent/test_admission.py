"""The reading gate: one malformed or repeated reading costs itself, never its batch."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import config
from edge_agent.agent.admission import ReadingGate
from edge_agent.agent.pipeline import Pipeline
from edge_agent.drivers.base import DriverHealth, DriverOutput
from edge_agent.records import Reading, ReadingBlock, Sensor, expand
from edge_agent.settings import parse
from edge_agent.sync.buffer import Buffer, BufferConfig

T0 = 1_800_000_000.0


def r(sensor: Any = "s", ts: Any = T0, value: Any = 1.0) -> Reading:
    return Reading(sensor, "t", value, "u", ts)


def test_gate_drops_malformed_and_repeated_and_keeps_the_rest() -> None:
    gate = ReadingGate()
    batch = [r(ts=T0), r(ts=math.nan), r(sensor=""), r(sensor=7), r(ts=1e12), r(ts=T0),
             r(ts=T0 + 1, value=np.float32(2.5)), r(ts=T0 + 2, value=True),
             r(ts=T0 + 3, value="high"), r(ts=T0 + 4, value=math.inf), r(ts=T0 + 1)]
    admitted, events = gate.admit(batch, T0)
    clean = expand(admitted)
    assert [x.timestamp for x in clean] == [T0, T0 + 1, T0 + 2, T0 + 4]
    assert clean[1].value == 2.5 and clean[2].value == 1.0
    assert clean[3].value is None and clean[3].quality == 0.0  # Inf sanitised, not dropped
    assert gate.stats() == {"bad_timestamp:s": 2, "bad_sensor_id:": 1, "bad_sensor_id:?": 1,
                            "repeated_timestamp:s": 2, "bad_value:s": 1}
    assert len(events) == 5  # one event per (reason, sensor), not per reading
    again, events2 = gate.admit([r(ts=math.nan)], T0)
    assert again == [] and events2 == []


def test_a_block_is_checked_row_by_row_and_stays_a_block() -> None:
    """A clean block passes as the same object; a block with bad rows keeps its clean rows as
    a block, and each bad row costs itself only (sanitised, dropped or counted as a repeat),
    exactly as the same readings one by one would."""
    a, b, c = Sensor("a", "t", "u", {"k": 1}), Sensor("b", "t", "u"), Sensor("c", "t", "u")
    gate = ReadingGate({"c": round(T0 * 1e6)})  # c's T0 was stored before a restart
    clean = ReadingBlock([a, b], [1.0, 2.0], [T0, T0], [1.0, 1.0])
    out, events = gate.admit([clean], T0)
    assert out[0] is clean and events == [] and gate.latest == {"a": 1.0, "b": 2.0}

    rows = ReadingBlock([a, b, c, a, b, c, a],
                        [3.0, math.nan, 5.0, 1.0, 7.0, 8.0, 9.0],
                        [T0 + 1, T0 + 1, T0, T0, math.inf, T0 + 1, T0 + 1],
                        [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0],
                        {6: {"reason": "own"}})
    out, events = gate.admit([rows], T0)
    by_gate = ReadingGate({"c": round(T0 * 1e6)})
    by_gate.admit([clean.row(0), clean.row(1)], T0)
    singles, _ = by_gate.admit(rows.readings(), T0)
    assert isinstance(out[0], ReadingBlock) and out[0].sensors == [a]  # a@T0+1 only
    got = {(x.sensor_id, x.timestamp, x.value, x.quality) for x in expand(out)}
    assert got == {(x.sensor_id, x.timestamp, x.value, x.quality) for x in expand(singles)}
    assert got == {("a", T0 + 1, 3.0, 1.0), ("b", T0 + 1, None, 0.0),  # NaN sanitised
                   ("c", T0 + 1, 8.0, 1.0)}  # quality 2.0 clamped (Reading.sanitised)
    assert gate.stats() == by_gate.stats() == {
        "repeated_timestamp:c": 1, "repeated_timestamp:a": 2, "bad_timestamp:b": 1}
    assert len(events) == 3


def test_a_bad_timestamp_behind_a_good_one_costs_its_row_only() -> None:
    """min()/max() skip a NaN that is not first, so a block [T0, NaN] once looked plain and the
    gate raised converting NaN to µs; it is now that row dropped (bad_timestamp), like a
    reading. The same sensor list again (its ids and deques are cached per list) still finds
    repeats, and an int quality 1 is admitted as 1.0, as a reading's is."""
    a, b, c = Sensor("a", "t", "u"), Sensor("b", "t", "u"), Sensor("c", "t", "u")
    for bad in (math.nan, math.inf):
        block = ReadingBlock([a, b, c], [1.0, 2.0, 3.0], [T0, bad, T0], [1.0, 1.0, 1.0])
        assert not block.plain()
        gate = ReadingGate()
        out, events = gate.admit([block], T0)
        assert [(x.sensor_id, x.timestamp) for x in expand(out)] == [("a", T0), ("c", T0)]
        assert gate.stats() == {"bad_timestamp:b": 1} and len(events) == 1
    sensors = [a, b, c]
    gate = ReadingGate()
    first = ReadingBlock(sensors, [1.0, 2.0, 3.0], [T0] * 3, [1.0, 1, 1.0])
    assert first.plain()
    out, _ = gate.admit([first], T0)
    assert out == [first] and gate.latest == {"a": 1.0, "b": 2.0, "c": 3.0}
    again = ReadingBlock(sensors, [4.0, 5.0, 6.0], [T0 + 1, T0, T0 + 1], [1.0] * 3)
    out, _ = gate.admit([again], T0)
    assert [(x.sensor_id, x.value) for x in expand(out)] == [("a", 4.0), ("c", 6.0)]
    assert gate.stats() == {"repeated_timestamp:b": 1}
    out, _ = gate.admit([ReadingBlock(sensors, [7.0] * 3, [T0] * 3, [1.0] * 3)], T0)
    assert out == [] and gate.stats() == {"repeated_timestamp:a": 1, "repeated_timestamp:b": 2,
                                          "repeated_timestamp:c": 1}


def test_blocks_are_admitted_as_their_readings_one_by_one_would_be() -> None:
    """Random blocks (recurring and new sensor lists, repeated, older and newer timestamps,
    NaN values and stamps, other qualities, readings in between): the gate's column paths
    (a plain block compared with the last one of its list, state applied later) keep, drop
    and count exactly what the same readings checked one by one do."""
    rng = np.random.default_rng(7)
    pool = [Sensor(f"s{i}", "t", "u") for i in range(6)]
    lists = [pool[:4], pool[2:], pool[:2], [pool[0], pool[3], pool[0]]]
    gate, ref = ReadingGate({"s5": round((T0 + 0.3) * 1e6)}), ReadingGate(
        {"s5": round((T0 + 0.3) * 1e6)})
    tick = 0
    for step in range(400):
        tick += int(rng.choice([1, 1, 1, 0, -1, -3, 5]))
        if step == 0 or rng.random() < 0.4:  # a driver mostly sends the same list again
            sensors = lists[int(rng.integers(len(lists)))]
        if rng.random() < 0.3:
            sensors = list(sensors)  # an equal list, not the same object
        n = len(sensors)
        stamps = [T0 + 0.1 * (tick + (int(rng.integers(-1, 2)) if rng.random() < 0.2 else 0))
                  for _ in range(n)]
        values = [float(rng.integers(100)) for _ in range(n)]
        quality = [1.0] * n
        # (rows a block sends through the reading checks go after its clean rows: a sensor
        # twice in one block is only compared with clean rows)
        if rng.random() < 0.1 and len(set(sensors)) == n:
            values[int(rng.integers(n))] = math.nan
        if rng.random() < 0.05:
            stamps[int(rng.integers(n))] = math.nan
        if rng.random() < 0.1 and len(set(sensors)) == n:
            quality[int(rng.integers(n))] = 0.5
        batch: list[Any] = [ReadingBlock(sensors, list[float | None](values), stamps, quality)]
        if rng.random() < 0.1:
            batch.append(r(sensor=f"s{int(rng.integers(6))}", ts=T0 + 0.1 * tick))
        got, events = gate.admit(batch, T0)
        want, ref_events = ref.admit(expand(batch), T0)

        def rows(x: list[Any]) -> list[tuple[str, float, str, float]]:
            return sorted((y.sensor_id, y.timestamp, repr(y.value), y.quality)
                          for y in expand(x))
        assert rows(got) == rows(want), step
        assert len(events) == len(ref_events) and gate.stats() == ref.stats(), step
        assert gate.latest == ref.latest, step
    assert len(gate.stats()) > 3 and any(k.startswith("repeated") for k in gate.stats())


class PollingPLC:
    """A polled tag whose SourceTimestamp only moves when its value changes, plus a NaN stamp."""

    streaming = True

    def __init__(self) -> None:
        self.name = "plc"
        self.n = 0
        self._h = DriverHealth("plc", "fake")

    async def open(self) -> None:
        return None

    async def read(self) -> DriverOutput:
        await asyncio.sleep(0.005)
        self.n += 1
        if self.n > 30:
            await asyncio.Event().wait()
        ts = T0 + self.n // 3  # the same source timestamp three polls in a row
        bad = Reading("plc.bad", "t", 1.0, "u", math.nan)
        return [Reading("plc.counter", "counter", float(self.n // 3), "", ts),
                Reading("plc.temp", "temperature", 20.0 + self.n, "degC", T0 + self.n), bad]

    async def close(self) -> None:
        return None

    def health(self) -> DriverHealth:
        return self._h


async def test_real_buffer_keeps_good_readings_around_bad_ones(tmp_path: Path) -> None:
    cfg = parse(config.AgentConfig, {"agent": {"state_dir": str(tmp_path)}})
    buf = Buffer(tmp_path / "buffer.db", BufferConfig())
    await buf.start()
    p = Pipeline(cfg, [PollingPLC()], buf, None)
    stop = asyncio.Event()
    task = asyncio.create_task(p.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 10)
    await buf.close()
    db = sqlite3.connect(tmp_path / "buffer.db")
    stored = db.execute("SELECT coalesce(sum(n), 0) FROM readings").fetchone()[0]
    kinds = [row[0] for row in db.execute("SELECT body FROM events")]
    db.close()
    assert stored == 30 + 11  # every temperature; one counter per distinct source timestamp
    assert p.gate.stats()["bad_timestamp:plc.bad"] == 30
    assert p.gate.stats()["repeated_timestamp:plc.counter"] == 19
    assert any("reading_dropped" in k for k in kinds) and any("agent_stopped" in k for k in kinds)


class StuckTag:
    """A polled tag whose value never changes: every poll repeats the same SourceTimestamp."""

    streaming = True

    def __init__(self, polls: int) -> None:
        self.name = "plc"
        self.polls = polls
        self.n = 0
        self._h = DriverHealth("plc", "fake")

    async def open(self) -> None:
        return None

    async def read(self) -> DriverOutput:
        await asyncio.sleep(0.005)
        self.n += 1
        if self.n > self.polls:
            await asyncio.Event().wait()
        return [Reading("plc.level", "level", 4.5, "m", T0 + 10.000001)]

    async def close(self) -> None:
        return None

    def health(self) -> DriverHealth:
        return self._h


async def test_repeat_of_a_sample_stored_before_a_restart_is_dropped(tmp_path: Path) -> None:
    cfg = config.AgentConfig.model_validate({"agent": {"state_dir": str(tmp_path)}})
    gates = []
    for _ in range(2):  # the agent restarts: a new pipeline over the reopened buffer
        buf = Buffer(tmp_path / "buffer.db", BufferConfig())
        await buf.start()
        p = Pipeline(cfg, [StuckTag(polls=10)], buf, None)
        stop = asyncio.Event()
        task = asyncio.create_task(p.run(stop))
        await asyncio.sleep(0.4)
        stop.set()
        await asyncio.wait_for(task, 10)
        await buf.close()
        gates.append(p.gate.stats())
    db = sqlite3.connect(tmp_path / "buffer.db")
    stored = db.execute("SELECT coalesce(sum(n), 0) FROM readings").fetchone()[0]
    db.close()
    assert stored == 1  # the first run stored the sample once; the second run stored nothing
    assert gates[0] == {"repeated_timestamp:plc.level": 9}
    assert gates[1] == {"repeated_timestamp:plc.level": 10}  # counted before being stored
