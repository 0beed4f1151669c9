"""A real pymodbus server for the driver tests: every type/order combination, faults on demand.

The register contents are packed here with ``struct`` by hand (not with the driver's codec), so
the tests compare the driver against an independent encoding.
"""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f",
         "int64": "q", "uint64": "Q", "float64": "d"}
SAMPLES = {"int16": -12345, "uint16": 54321, "int32": -123456789, "uint32": 3_000_000_123,
           "float32": -3.25, "int64": -1_234_567_890_123, "uint64": 18_000_000_000_000_000_000,
           "float64": 2.718281828459045}
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]

INVALID_ADDR = 300          # holding: a hole inside an otherwise valid range
FAIL_BASE = 500             # input registers answering DEVICE_FAILURE when told to
SLOW_BASE = 600             # input registers answering late when told to


def wire(dtype: str, value: float, byte_order: str, word_order: str) -> list[int]:
    raw = struct.pack(">" + CODES[dtype], value)
    pairs = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        pairs.reverse()
    if byte_order == "little":
        pairs = [p[::-1] for p in pairs]
    return [int.from_bytes(p, "big") for p in pairs]


@dataclass
class PlantMap:
    """The points (as driver config tables) and the exact values the server holds."""

    points: list[dict[str, Any]] = field(default_factory=list)
    expected: dict[str, float] = field(default_factory=dict)
    holding: dict[int, int] = field(default_factory=dict)
    inputs: dict[int, int] = field(default_factory=dict)
    coils: dict[int, bool] = field(default_factory=dict)
    discrete: dict[int, bool] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)


def plant_map() -> PlantMap:
    m = PlantMap()
    addr = 0
    for dtype in CODES:
        for bo, wo in ORDERS:
            sid = f"h.{dtype}.{bo[0]}{wo[0]}"
            for i, w in enumerate(wire(dtype, SAMPLES[dtype], bo, wo)):
                m.holding[addr + i] = w
            m.points.append({"sensor_id": sid, "table": "holding", "address": addr,
                             "data_type": dtype, "byte_order": bo, "word_order": wo})
            m.expected[sid] = float(SAMPLES[dtype])
            addr += struct.calcsize(CODES[dtype]) // 2
    # scaled input registers: temperature x10 with an offset, velocity as float32 CDAB
    m.inputs[0] = 655
    m.points.append({"sensor_id": "i.temp", "table": "input", "address": 0,
                     "data_type": "int16", "scale": 0.1, "offset": -40.0, "unit": "degC"})
    m.expected["i.temp"] = 655 * 0.1 - 40.0
    for i, w in enumerate(wire("float32", 4.5, "big", "little")):
        m.inputs[2 + i] = w
    m.points.append({"sensor_id": "i.vel", "table": "input", "address": 2,
                     "data_type": "float32", "word_order": "little"})
    m.expected["i.vel"] = 4.5
    # bitfields on a status word 0b1010_0000_0000_0110
    m.holding[200] = 0b1010_0000_0000_0110
    m.points += [{"sensor_id": "h.status.bit1", "table": "holding", "address": 200,
                  "data_type": "uint16", "bit": 1},
                 {"sensor_id": "h.status.hi", "table": "holding", "address": 200,
                  "data_type": "uint16", "bit": 13, "bit_count": 3}]
    m.expected["h.status.bit1"] = 1.0
    m.expected["h.status.hi"] = 0b101
    # a string (serial number), 4 registers
    for i, w in enumerate(struct.unpack(">4H", b"VT100-7\x00")):
        m.holding[210 + i] = w
    m.points.append({"sensor_id": "h.serial", "table": "holding", "address": 210,
                     "data_type": "string", "length": 4})
    m.texts["h.serial"] = "VT100-7"
    # the hole: 298 and 302 exist, 300 does not
    m.holding[298] = 11
    m.holding[302] = 22
    m.points += [{"sensor_id": "h.before_hole", "address": 298},
                 {"sensor_id": "h.hole", "address": INVALID_ADDR},
                 {"sensor_id": "h.after_hole", "address": 302}]
    m.expected.update({"h.before_hole": 11.0, "h.after_hole": 22.0})
    # coils and discrete inputs
    for a, v in {0: True, 1: False, 7: True}.items():
        m.coils[a] = v
        m.points.append({"sensor_id": f"c.{a}", "table": "coil", "address": a,
                         "data_type": "bool"})
        m.expected[f"c.{a}"] = float(v)
    for a, v in {3: True, 4: True, 5: False}.items():
        m.discrete[a] = v
        m.points.append({"sensor_id": f"d.{a}", "table": "discrete_input", "address": a,
                         "data_type": "bool"})
        m.expected[f"d.{a}"] = float(v)
    m.inputs[FAIL_BASE] = 1
    m.inputs[SLOW_BASE] = 2
    m.points += [{"sensor_id": "i.failing", "table": "input", "address": FAIL_BASE},
                 {"sensor_id": "i.slow", "table": "input", "address": SLOW_BASE}]
    m.expected.update({"i.failing": 1.0, "i.slow": 2.0})
    return m


def _reg_blocks(regs: dict[int, int]) -> list[SimData]:
    """Contiguous runs become SimData blocks; the gaps stay invalid (ILLEGAL ADDRESS)."""
    out: list[SimData] = []
    run: list[int] = []
    start = -2
    for a in sorted(regs):
        if run and a == start + len(run):
            run.append(regs[a])
            continue
        if run:
            out.append(SimData(start, values=run, datatype=DataType.REGISTERS))
        start, run = a, [regs[a]]
    if run:
        out.append(SimData(start, values=run, datatype=DataType.REGISTERS))
    return out


def _bit_block(bits: dict[int, bool]) -> list[SimData]:
    values = [bits.get(i, False) for i in range(16)]
    return [SimData(0, values=values, datatype=DataType.BITS)]


@dataclass
class Faults:
    device_failure: bool = False
    slow: float = 0.0        # seconds the SLOW_BASE register takes to answer


class MbServer:
    """Start/stop a pymodbus TCP (or serial) server on a fixed address; faults on demand."""

    def __init__(self, m: PlantMap, *, port: int = 0, serial_port: str = "",
                 unit_id: int = 1) -> None:
        self.map = m
        self.port = port
        self.serial_port = serial_port
        self.unit_id = unit_id
        self.faults = Faults()
        self.server: ModbusTcpServer | ModbusSerialServer | None = None

    async def _action(self, fc: int, _start: int, address: int, count: int,
                      _regs: list[int], _values: Any) -> ExcCodes | None:
        if fc == 4 and address <= FAIL_BASE < address + count and self.faults.device_failure:
            return ExcCodes.DEVICE_FAILURE
        if fc == 4 and address <= SLOW_BASE < address + count and self.faults.slow:
            await asyncio.sleep(self.faults.slow)
        return None

    def _device(self) -> SimDevice:
        m = self.map
        return SimDevice(self.unit_id, simdata=(_bit_block(m.coils), _bit_block(m.discrete),
                                                _reg_blocks(m.holding), _reg_blocks(m.inputs)),
                         action=self._action)

    async def start(self) -> None:
        if self.serial_port:
            self.server = ModbusSerialServer(self._device(), port=self.serial_port,
                                             baudrate=115200, timeout=0.5)
        else:
            self.server = ModbusTcpServer(self._device(), address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None
            await asyncio.sleep(0)

    def set_input(self, address: int, value: int) -> None:
        # Input registers are read-only on the wire; the runtime block is ours to change.
        assert self.server is not None
        rt = self.server.context.devices[self.unit_id]  # type: ignore[union-attr]
        start, _, regs, _ = rt.block["i"]
        regs[address - start] = value


class PtyLink:
    """Two pseudo-terminals joined back to back: a null-modem cable the test can unplug."""

    def __init__(self) -> None:
        self.m1, s1 = os.openpty()
        self.m2, s2 = os.openpty()
        self.path1, self.path2 = os.ttyname(s1), os.ttyname(s2)
        self._slaves = (s1, s2)
        self.plugged = True
        loop = asyncio.get_running_loop()
        loop.add_reader(self.m1, self._pump, self.m1, self.m2)
        loop.add_reader(self.m2, self._pump, self.m2, self.m1)

    def _pump(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:
            return
        if self.plugged and data:
            os.write(dst, data)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in (self.m1, self.m2):
            loop.remove_reader(fd)
        for fd in (self.m1, self.m2, *self._slaves):
            os.close(fd)
