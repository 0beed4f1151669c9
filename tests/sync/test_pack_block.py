"""Reading blocks in the buffer: the same stored rows as the same readings one by one."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from edge_agent.records import Reading, ReadingBlock, Sensor
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.convert import Converted, convert
from edge_agent.sync.pack import Packer, Run, chunk_rows, prefix, unpack, unpack_idx, wire

T0 = 1_800_000_000.0
A = Sensor("a", "temperature", "degC", {"device": "d", "register": "holding:1"})
B = Sensor("b", "speed", "rpm")


def block() -> ReadingBlock:
    return ReadingBlock([A, B, A, B, A], [1.5, 2.0, math.inf, 3.25, 4.0],
                        [T0, T0, T0 + 0.1, T0 + 0.1, T0 + 0.2], [1.0, 0.5, 1.0, 1.0, 1.0],
                        {4: {"device": "d", "reason": "own metadata"}})


def test_a_block_packs_to_the_bytes_of_its_readings() -> None:
    by_block, by_rows = Run(), Run()
    Packer().block(block(), by_block)
    Packer().readings(block().readings(), by_rows)
    assert by_block.frags == by_rows.frags and by_block.us == by_rows.us
    assert by_block.idx == by_rows.idx and by_block.table == by_rows.table
    assert '"metadata":{"device":"d","register":"holding:1"}' in by_block.frags[0]
    assert by_block.frags[2].startswith("null,") and "non-finite" in by_block.frags[2]


def test_a_bad_put_leaves_the_group_as_it_was() -> None:
    rows = Converted()
    convert([block()], Packer(), rows)
    before = (list(rows.readings.frags), list(rows.readings.table))
    bad = ReadingBlock([Sensor("new", "t", "u")], [1.0], [math.nan], [1.0])
    with pytest.raises(ValueError):
        convert([Reading("c", "t", 1.0, "u", T0), bad], Packer(), rows)
    assert (rows.readings.frags, rows.readings.table) == before
    assert set(rows.readings.ix) == set(before[1])


async def test_blocks_are_committed_and_counted_like_readings(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db", BufferConfig())
    await buf.start()
    await buf.put([block()])
    await buf.put(block().readings())
    await buf.close()
    db = sqlite3.connect(tmp_path / "b.db")
    n = db.execute("SELECT sum(n) FROM readings").fetchone()[0]
    gate = dict(db.execute("SELECT s.sensor_id, g.us FROM gate g JOIN sources s "
                           "ON s.id = g.src").fetchall())
    db.close()
    assert n == 10
    assert gate == {"a": round((T0 + 0.2) * 1e6), "b": round((T0 + 0.1) * 1e6)}


def test_a_plain_block_takes_the_column_path_to_the_same_bytes() -> None:
    c = Sensor("c", "t", "u", {"node": "ns=2;s=c"})
    plain = ReadingBlock([A, B, c, A], [1.5, -2.0, 1e300, 0.1],
                         [T0, T0, T0 + 0.000001, T0 + 0.5], [1.0, 1.0, 1.0, 1.0])
    assert plain.plain() and not block().plain()
    assert not ReadingBlock([A], [1e308 * 10], [T0], [1.0]).plain()  # inf
    assert not ReadingBlock([A], [1.0], [T0], [0.5]).plain()
    by_block, by_rows, packer = Run(), Run(), Packer()
    packer.block(plain, by_block)
    packer.block(plain, by_block)  # second time: every sensor and timestamp cached
    Packer().readings(plain.readings() * 2, by_rows)
    assert by_block.frags == by_rows.frags and by_block.us == by_rows.us
    assert by_block.idx == by_rows.idx and by_block.table == by_rows.table


def test_value_texts_are_exact_in_every_block() -> None:
    """Repeated and new values, 0.0 and -0.0: the same fragments as reading by reading."""
    packer = Packer()
    sensors = [Sensor(f"s{i}", "t", "u") for i in range(8)]
    for values in ([1.0, 2.5, 0.0, -0.0, 1.0, 2.5, 3.0, 1e-7],
                   [1.0, 2.5, -0.0, 0.0, 1.0, 2.5, 3.0, 1e-7],  # zeros swapped
                   [float(i) + 0.125 for i in range(8)]):
        run, ref = Run(), Run()
        blk = ReadingBlock(list(sensors), list[float | None](values), [T0] * 8, [1.0] * 8)
        packer.block(blk, run)
        Packer().readings(blk.readings(), ref)
        assert run.frags == ref.frags


def test_sensor_lists_alike_at_both_ends_keep_their_own_layout() -> None:
    """The packer's per-list cache (records.Layouts) is keyed by length and first/last sensor
    but confirmed by the whole list: [A, B, A] and [A, c, A] pack as their own readings, into
    a fresh run and into one that already holds other sources."""
    c = Sensor("c", "t", "u", {"node": "x"})
    packer = Packer()
    for sensors in ([A, B, A], [A, c, A], [A, B, A]):
        blk = ReadingBlock(sensors, [1.0, 2.0, 3.0], [T0, T0, T0 + 1], [1.0] * 3)
        assert blk.plain()
        for before in ([], [Reading("z", "t", 0.5, "u", T0)]):
            run, ref = Run(), Run()
            packer.readings([*before, blk], run)
            Packer().readings(before + blk.readings(), ref)
            assert (run.frags, run.idx, run.table) == (ref.frags, ref.idx, ref.table)


def test_chunk_rows_are_the_same_when_their_parts_come_from_its_caches() -> None:
    """chunk_rows keeps the source list text, prefix lengths and packed indices it made; a
    second commit of the same sources (or other sources under the same ids) gets the same
    rows as a first one would, and ``size`` stays the chunk's wire length plus one per row."""
    c = Sensor("c", "t", "u")
    for sensors in ([A, B, c], [c, B, A], [A, B, c]):
        run = Run()
        Packer().block(ReadingBlock(sensors, [1.0, 2.0, 3.0], [T0] * 3, [1.0] * 3), run)
        [row] = chunk_rows(run, [7, 8, 9])
        n, _, _, size, srcs, idx, body = row
        tails = unpack(body).split("\n")
        text = wire([prefix(k) for k in run.table], unpack_idx(idx, n), tails)
        assert srcs == "7,8,9" and size == len(text) + n and text.startswith(
            prefix(run.table[0]) + tails[0])
        assert chunk_rows(run, [7, 8, 9]) == [row]
