"""Modbus register decoding and block coalescing — pure functions, no I/O.

Registers are 16-bit words as the wire gives them (``0..65535``). A multi-register value is
assembled as follows: ``word_order="big"`` means the first register holds the most significant
word (Modbus convention, "ABCD"); ``"little"`` reverses the words ("CDAB" for 32 bits).
``byte_order="big"`` keeps each register's bytes as sent; ``"little"`` swaps the two bytes in
every register ("BADC"; with little word order, "DCBA").

:func:`coalesce` groups point spans of one table into block reads no longer than the protocol
limit (125 registers / 2000 bits), merging neighbours separated by at most ``max_gap`` unused
addresses.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from edge_agent import errors

Table = Literal["coil", "discrete_input", "holding", "input"]
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
                   "float64", "string"]
Order = Literal["big", "little"]

BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete_input"})
MAX_REGISTERS = 125     # FC 3/4 limit per request
MAX_BITS = 2000         # FC 1/2 limit per request

# data type -> (struct code, registers)
_NUMERIC: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1),
    "int32": ("i", 2), "uint32": ("I", 2), "float32": ("f", 2),
    "int64": ("q", 4), "uint64": ("Q", 4), "float64": ("d", 4),
}
INTEGER_TYPES: frozenset[str] = frozenset(t for t in _NUMERIC if not t.startswith("float"))


class DecodeError(errors.DecodeError):
    """Registers that cannot be decoded as the point says (wrong count, bad bit range)."""


def register_count(data_type: str, length: int = 1) -> int:
    """Registers (or bits, for ``bool``) one value of ``data_type`` occupies."""
    if data_type == "bool":
        return 1
    if data_type == "string":
        return length
    try:
        return _NUMERIC[data_type][1]
    except KeyError:
        raise DecodeError(f"unknown data type {data_type!r}") from None


def bit_width(data_type: str) -> int:
    return 1 if data_type == "bool" else 16 * register_count(data_type)


def registers_to_bytes(regs: Sequence[int], byte_order: Order = "big",
                       word_order: Order = "big") -> bytes:
    """Big-endian bytes of the value the registers carry, after byte/word reordering."""
    words = list(regs)
    if word_order == "little":
        words.reverse()
    out = bytearray()
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise DecodeError(f"register value {w} outside 0..65535")
        hi, lo = w >> 8, w & 0xFF
        out += bytes((hi, lo)) if byte_order == "big" else bytes((lo, hi))
    return bytes(out)


def bytes_to_registers(data: bytes, byte_order: Order = "big",
                       word_order: Order = "big") -> list[int]:
    """Inverse of :func:`registers_to_bytes` (for writing and for tests)."""
    if len(data) % 2:
        raise DecodeError("odd number of bytes")
    words = []
    for i in range(0, len(data), 2):
        a, b = data[i], data[i + 1]
        words.append((a << 8 | b) if byte_order == "big" else (b << 8 | a))
    if word_order == "little":
        words.reverse()
    return words


def decode_number(regs: Sequence[int], data_type: str, byte_order: Order = "big",
                  word_order: Order = "big") -> int | float:
    """Decode one numeric value from exactly the registers it occupies."""
    code, n = _NUMERIC.get(data_type, ("", 0))
    if not code:
        raise DecodeError(f"{data_type!r} is not a numeric register type")
    if len(regs) != n:
        raise DecodeError(f"{data_type} needs {n} register(s), got {len(regs)}")
    value: int | float = struct.unpack(">" + code, registers_to_bytes(regs, byte_order,
                                                                      word_order))[0]
    return value


def encode_number(value: float, data_type: str, byte_order: Order = "big",
                  word_order: Order = "big") -> list[int]:
    code, _ = _NUMERIC.get(data_type, ("", 0))
    if not code:
        raise DecodeError(f"{data_type!r} is not a numeric register type")
    packed = struct.pack(">" + code, int(value) if data_type in INTEGER_TYPES else value)
    return bytes_to_registers(packed, byte_order, word_order)


def decode_string(regs: Sequence[int], byte_order: Order = "big", encoding: str = "latin-1") -> str:
    """Two characters per register; trailing NULs and spaces removed. Word order never applies
    to strings (characters run in address order)."""
    raw = registers_to_bytes(regs, byte_order, "big")
    return raw.split(b"\x00", 1)[0].rstrip(b" ").decode(encoding, errors="replace")


def extract_bits(raw: int, bit: int, count: int, width: int) -> int:
    """``count`` bits starting at ``bit`` (0 = least significant) of an unsigned ``raw``."""
    if bit < 0 or count < 1 or bit + count > width:
        raise DecodeError(f"bits {bit}..{bit + count - 1} outside a {width}-bit value")
    return (raw >> bit) & ((1 << count) - 1)


@dataclass(frozen=True, slots=True)
class PointSpec:
    """What the decoder needs to know about one point."""

    table: Table
    address: int
    data_type: DataType = "uint16"
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    bit: int | None = None
    bit_count: int = 1
    length: int = 1

    @property
    def count(self) -> int:
        return register_count(self.data_type, self.length)


def decode_point(spec: PointSpec, words: Sequence[int] | Sequence[bool]) -> float | str:
    """Decode and scale one point from exactly its registers (or its one bit)."""
    if spec.data_type == "bool":
        if len(words) != 1:
            raise DecodeError("bool needs exactly one bit")
        return 1.0 if words[0] else 0.0
    regs = [int(w) for w in words]
    if spec.data_type == "string":
        return decode_string(regs, spec.byte_order)
    if spec.bit is not None:
        # Bitfields read the unsigned pattern whatever the signedness of the declared type.
        unsigned = "uint" + spec.data_type.removeprefix("u").removeprefix("int")
        if spec.data_type not in INTEGER_TYPES:
            raise DecodeError(f"bitfields need an integer type, not {spec.data_type}")
        raw = int(decode_number(regs, unsigned, spec.byte_order, spec.word_order))
        field_value = extract_bits(raw, spec.bit, spec.bit_count, bit_width(spec.data_type))
        return field_value * spec.scale + spec.offset
    value = decode_number(regs, spec.data_type, spec.byte_order, spec.word_order)
    return float(value) * spec.scale + spec.offset


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: ``count`` registers/bits of ``table`` from ``start``; ``members`` are
    the indices (into the caller's point list) of the points it covers."""

    table: Table
    start: int
    count: int
    members: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.start + self.count


def coalesce(points: Sequence[PointSpec], *, max_gap: int = 10, max_registers: int = MAX_REGISTERS,
             max_bits: int = MAX_BITS, indices: Iterable[int] | None = None) -> list[Block]:
    """Group points into as few block reads as the limits allow.

    Points are merged, per table, in address order while the unused addresses between them are
    at most ``max_gap`` and the whole block stays within ``max_registers`` (``max_bits`` for
    coils and discrete inputs). Overlapping points share a block. A point longer than the limit
    raises :class:`DecodeError`.
    """
    idx = list(range(len(points))) if indices is None else list(indices)
    by_table: dict[str, list[int]] = {}
    for i in idx:
        by_table.setdefault(points[i].table, []).append(i)
    blocks: list[Block] = []
    for table in sorted(by_table):
        limit = max_bits if table in BIT_TABLES else max_registers
        members = sorted(by_table[table], key=lambda i: (points[i].address, points[i].count))
        cur: list[int] = []
        start = end = 0
        for i in members:
            p = points[i]
            p_end = p.address + p.count
            if p.count > limit:
                raise DecodeError(f"point at {table}:{p.address} spans {p.count} > {limit}")
            if cur and p.address - end <= max_gap and max(end, p_end) - start <= limit:
                cur.append(i)
                end = max(end, p_end)
                continue
            if cur:
                blocks.append(Block(points[cur[0]].table, start, end - start, tuple(cur)))
            cur, start, end = [i], p.address, p_end
        if cur:
            blocks.append(Block(points[cur[0]].table, start, end - start, tuple(cur)))
    return blocks


def slice_for(block: Block, spec: PointSpec, words: Sequence[int] | Sequence[bool]
              ) -> Sequence[int] | Sequence[bool]:
    """The registers (bits) of ``spec`` inside the words read for ``block``."""
    lo = spec.address - block.start
    hi = lo + spec.count
    if lo < 0 or hi > len(words):
        raise DecodeError(f"point {spec.table}:{spec.address} outside the block read "
                          f"({block.start}+{len(words)})")
    return words[lo:hi]


def fast_format(spec: PointSpec) -> str | None:
    """The ``struct`` format that reads ``spec`` straight from its block's big-endian bytes,
    or None when it needs :func:`decode_point` (bits, strings, bitfields, swapped orders)."""
    code, n = _NUMERIC.get(spec.data_type, ("", 0))
    if (not code or spec.bit is not None or spec.table in BIT_TABLES
            or spec.byte_order != "big" or (spec.word_order != "big" and n > 1)):
        return None
    return ">" + code


@dataclass(frozen=True, slots=True)
class BlockPlan:
    """How to decode every member of one block in one go: a ``struct`` format over the block's
    bytes (pad bytes for the gaps), then ``float(raw) * scale + offset`` column by column."""

    layout: struct.Struct
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    ints: bool  # integers, scale 1, offset 0: ``float(raw)`` is the value


def block_plan(block: Block, specs: Sequence[PointSpec], fast: Sequence[str | None]
               ) -> BlockPlan | None:
    """The plan of ``block`` when all its members are plain numbers (:func:`fast_format`)
    that do not overlap, else None (:func:`decode_members` then decodes member by member)."""
    if block.table in BIT_TABLES or not block.members:
        return None
    fmt, pos = [">"], block.start
    for m in block.members:
        spec, code = specs[m], fast[m]
        if code is None or spec.address < pos:
            return None
        if spec.address > pos:
            fmt.append(f"{2 * (spec.address - pos)}x")
        fmt.append(code[1:])
        pos = spec.address + spec.count
    members = [specs[m] for m in block.members]
    scales = tuple(float(s.scale) for s in members)
    offsets = tuple(float(s.offset) for s in members)
    ints = all(s.data_type in INTEGER_TYPES and s.scale == 1.0 and s.offset == 0.0
               for s in members)
    return BlockPlan(struct.Struct("".join(fmt)), scales, offsets, ints)


def decode_members(block: Block, specs: Sequence[PointSpec], fast: Sequence[str | None],
                   words: Sequence[int] | Sequence[bool], plan: BlockPlan | None = None
                   ) -> list[float | str | DecodeError]:
    """Every member of ``block`` decoded from the words read for it (in member order): the
    block's registers are packed once and plain numbers unpacked from them in place (with
    ``plan``, :func:`block_plan`, all at once); the others (and any point outside the words)
    go through :func:`decode_point`."""
    data = b""
    if block.table not in BIT_TABLES:
        try:
            data = struct.pack(f">{len(words)}H", *words)
        except struct.error:  # a word outside 0..65535: decode_point says which
            data = b""
    if plan is not None and data and len(data) >= plan.layout.size:
        raw = map(float, plan.layout.unpack_from(data))
        if plan.ints:  # float(raw) * 1.0 + 0.0 is float(raw) for an integer
            return list(raw)
        return list(map(float.__add__, map(float.__mul__, raw, plan.scales), plan.offsets))
    out: list[float | str | DecodeError] = []
    unpack = struct.unpack_from
    for m in block.members:
        spec, fmt = specs[m], fast[m]
        lo = 2 * (spec.address - block.start)
        if fmt is not None and data and 0 <= lo <= len(data) - 2 * spec.count:
            out.append(float(unpack(fmt, data, lo)[0]) * spec.scale + spec.offset)
            continue
        try:
            out.append(decode_point(spec, slice_for(block, spec, words)))
        except DecodeError as exc:
            out.append(exc)
    return out

