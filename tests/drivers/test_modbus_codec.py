"""Register decoding and block coalescing, against values packed independently with struct."""

from __future__ import annotations

import math

import pytest

from edge_agent.drivers.modbus_codec import (
    Block,
    DecodeError,
    PointSpec,
    block_plan,
    bytes_to_registers,
    coalesce,
    decode_members,
    decode_number,
    decode_point,
    decode_string,
    encode_number,
    extract_bits,
    fast_format,
    registers_to_bytes,
    slice_for,
)
from tests.drivers.modbus_server import CODES
from tests.drivers.modbus_server import wire as wire_words  # the device layout, built by hand

SAMPLES = {"int16": -12345, "uint16": 54321, "int32": -123456789, "uint32": 3_000_000_123,
           "float32": 3.25, "int64": -1_234_567_890_123, "uint64": 18_000_000_000_000_000_000,
           "float64": -2.718281828459045}


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_every_type_and_order_decodes_exactly(dtype: str, byte_order: str,
                                              word_order: str) -> None:
    value = SAMPLES[dtype]
    words = wire_words(dtype, value, byte_order, word_order)
    assert decode_number(words, dtype, byte_order, word_order) == value  # type: ignore[arg-type]
    assert encode_number(value, dtype, byte_order, word_order) == words  # type: ignore[arg-type]


def test_known_layouts() -> None:
    # float32 1.0 = 0x3F800000: ABCD, CDAB, BADC, DCBA
    assert decode_number([0x3F80, 0x0000], "float32") == 1.0
    assert decode_number([0x0000, 0x3F80], "float32", "big", "little") == 1.0
    assert decode_number([0x803F, 0x0000], "float32", "little", "big") == 1.0
    assert decode_number([0x0000, 0x803F], "float32", "little", "little") == 1.0
    assert decode_number([0xFFFF], "int16") == -1
    assert decode_number([0xFFFF], "uint16") == 65535
    assert registers_to_bytes([0x0102, 0x0304], "little", "little") == b"\x04\x03\x02\x01"
    assert bytes_to_registers(b"\x04\x03\x02\x01", "little", "little") == [0x0102, 0x0304]


def test_wrong_register_count_and_range_are_errors() -> None:
    with pytest.raises(DecodeError, match="needs 2"):
        decode_number([1], "float32")
    with pytest.raises(DecodeError, match="outside"):
        registers_to_bytes([70000])
    with pytest.raises(DecodeError):
        decode_number([1], "string")


def test_strings_and_bitfields() -> None:
    regs = bytes_to_registers(b"VT-100\x00\x00")
    assert decode_string(regs) == "VT-100"
    swapped = bytes_to_registers(b"TV1-00\x00\x00")  # byte-swapped per register
    assert decode_string(swapped, "little") == "VT-100"
    assert extract_bits(0b1011_0000, 4, 4, 16) == 0b1011
    with pytest.raises(DecodeError):
        extract_bits(0, 14, 4, 16)
    spec = PointSpec("holding", 0, "int16", bit=15)
    assert decode_point(spec, [0x8000]) == 1.0  # sign bit of an int16 read as a flag
    spec2 = PointSpec("holding", 0, "uint32", bit=16, bit_count=3, word_order="little")
    assert decode_point(spec2, [0x0000, 0x0005]) == 5.0


def test_scale_offset_and_bool() -> None:
    spec = PointSpec("input", 0, "int16", scale=0.1, offset=-40.0)
    assert math.isclose(float(decode_point(spec, [650])), 25.0)
    assert decode_point(PointSpec("coil", 3, "bool"), [True]) == 1.0
    assert decode_point(PointSpec("coil", 3, "bool"), [False]) == 0.0


def test_coalesce_merges_neighbours_within_gap_and_limit() -> None:
    pts = [PointSpec("holding", 0, "float32"), PointSpec("holding", 2, "uint16"),
           PointSpec("holding", 10, "float64"), PointSpec("holding", 30, "int16"),
           PointSpec("input", 0, "int16"), PointSpec("coil", 5, "bool"),
           PointSpec("coil", 1, "bool")]
    blocks = coalesce(pts, max_gap=7)  # 3..9 unused: gap 7
    assert Block("holding", 0, 14, (0, 1, 2)) in blocks
    assert Block("holding", 30, 1, (3,)) in blocks
    assert Block("input", 0, 1, (4,)) in blocks
    assert Block("coil", 1, 5, (6, 5)) in blocks
    assert len(blocks) == 4
    # gap 0: only touching points merge
    assert len([b for b in coalesce(pts, max_gap=0) if b.table == "holding"]) == 3


def test_coalesce_respects_the_125_register_limit() -> None:
    pts = [PointSpec("holding", a, "float32") for a in range(0, 400, 2)]
    blocks = coalesce(pts, max_gap=0)
    assert all(b.count <= 125 for b in blocks)
    assert sorted(m for b in blocks for m in b.members) == list(range(200))
    assert sum(b.count for b in blocks) == 400
    # overlapping points (a bitfield on a register another point reads) share one block
    ov = [PointSpec("holding", 0, "uint32"), PointSpec("holding", 1, "uint16", bit=3)]
    assert coalesce(ov) == [Block("holding", 0, 2, (0, 1))]
    with pytest.raises(DecodeError):
        coalesce([PointSpec("holding", 0, "string", length=126)])


def test_slice_for_bounds() -> None:
    b = Block("holding", 10, 4, (0,))
    assert slice_for(b, PointSpec("holding", 12, "float32"), [1, 2, 3, 4]) == [3, 4]
    with pytest.raises(DecodeError):
        slice_for(b, PointSpec("holding", 13, "float32"), [1, 2, 3, 4])


def test_a_planned_block_decodes_like_point_by_point() -> None:
    """block_plan unpacks a whole block in one struct call: the same values, bit for bit
    (a float's -0.0 + offset 0.0 is 0.0 as before, NaN stays NaN, gaps are skipped)."""
    specs = [PointSpec("holding", 0, "uint16"), PointSpec("holding", 1, "int16", scale=0.5),
             PointSpec("holding", 4, "float32"), PointSpec("holding", 6, "float32"),
             PointSpec("holding", 8, "int32", offset=-3.0), PointSpec("holding", 10, "float64"),
             PointSpec("holding", 14, "uint64", scale=2), PointSpec("holding", 20, "uint16")]
    words = [65535, 0x8001, 7, 7,                            # two gap registers (2, 3)
             *encode_number(-0.0, "float32"), 0x7FC0, 0,     # -0.0 and a NaN
             *encode_number(-5, "int32"), *encode_number(1e300, "float64"),
             *encode_number(2**64 - 1, "uint64"), 9, 9, 123]
    fast = [fast_format(s) for s in specs]
    [block] = coalesce(specs)
    plan = block_plan(block, specs, fast)
    assert plan is not None and not plan.ints
    slow = [decode_point(s, slice_for(block, s, words)) for s in specs]
    got = decode_members(block, specs, fast, words, plan)
    assert list(map(repr, got)) == list(map(repr, slow))
    assert got[:2] == [65535.0, -32767 * 0.5] and repr(got[2]) == "0.0" and got[3] != got[3]
    assert decode_members(block, specs, fast, words[:20], plan)[-1].__class__ is DecodeError
    sub = [specs[0], specs[-1]]  # 20 registers apart: one block per point
    plans = [block_plan(b, sub, fast[:1] + fast[-1:]) for b in coalesce(sub, max_gap=0)]
    assert len(plans) == 2 and all(p is not None and p.ints for p in plans)
    # overlapping points, swapped 32-bit words and bit tables are decoded point by point
    assert block_plan(Block("holding", 0, 2, (0, 1)), [specs[4], specs[0]], fast) is None
    swapped = [PointSpec("holding", 0, "float32", word_order="little")]
    assert block_plan(coalesce(swapped)[0], swapped, [fast_format(swapped[0])]) is None
    coil = [PointSpec("coil", 0, "bool")]
    assert block_plan(coalesce(coil)[0], coil, [None]) is None
