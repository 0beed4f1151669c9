"""Modbus TCP / RTU driver (pymodbus): register maps, block reads, per-device schedules.

One driver owns one connection (a TCP socket to a device or gateway, or one serial line) and
polls any number of devices (unit ids) on it. Points of a device are coalesced into block reads
(:func:`edge_agent.drivers.modbus_codec.coalesce`). The agent calls :meth:`ModbusDriver.read`
every ``poll_interval``; each call reads the devices that are due.

Failures stay as small as they can be: an exception response or a timeout turns the points of
that block into quality-0 readings with the reason, and the driver goes on. A block refused with
ILLEGAL ADDRESS is split into single-point reads from then on (one bad address in a coalesced
range must not blank its neighbours). A unit that stops answering while others on the same
connection still do is probed with one request at growing gaps (``silent_unit_probe`` at most),
so its timeouts do not starve the others (``health().detail["silent_units"]``). Only a lost
connection — or one on which no unit answered :data:`SILENT_POLLS_DEAD` polls in a row — raises
:class:`DriverDisconnected`; pymodbus' own reconnect is disabled — the agent reconnects with a
fresh client. A poll counts as a good read (``health().reads``) only when the peer answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import repeat
from typing import Any, Literal, cast

from pydantic import Field
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from edge_agent.drivers.base import DriverDisconnected, DriverError, DriverHealth, DriverOutput
from edge_agent.drivers.modbus_codec import (
    BIT_TABLES,
    INTEGER_TYPES,
    MAX_BITS,
    MAX_REGISTERS,
    Block,
    BlockPlan,
    DataType,
    DecodeError,
    Order,
    PointSpec,
    Table,
    bit_width,
    block_plan,
    coalesce,
    decode_members,
    fast_format,
)
from edge_agent.drivers.modbus_units import SILENT_POLLS_DEAD, UnitState, schedule
from edge_agent.records import QUALITY_BAD, QUALITY_GOOD, ReadingBlock, Sensor
from edge_agent.settings import Duration, Model

log = logging.getLogger(__name__)

_ID = r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}"


class Point(Model):
    """One value in a device's register map."""

    sensor_id: str = Field(pattern=f"^(?:{_ID})$")
    address: int = Field(ge=0, le=65535)
    table: Table = "holding"
    data_type: DataType = "uint16"
    sensor_type: str = "modbus"
    unit: str = ""
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    bit: int | None = Field(None, ge=0, le=63)     # bitfield: first bit (0 = LSB)...
    bit_count: int = Field(1, ge=1, le=64)          # ...and how many bits
    length: int = Field(1, ge=1, le=MAX_REGISTERS)  # registers, for strings

    def spec(self) -> PointSpec:
        return PointSpec(self.table, self.address, self.data_type, self.byte_order,
                         self.word_order, self.scale, self.offset, self.bit, self.bit_count,
                         self.length)

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        bits = self.table in BIT_TABLES
        if bits and self.data_type != "bool":
            out.append(("data_type", f"a {self.table} point must be \"bool\""))
        if not bits and self.data_type == "bool":
            out.append(("data_type", "\"bool\" is for coils and discrete inputs; use a "
                                     "bitfield (bit = n) on a register"))
        if self.bit is not None:
            if self.data_type not in INTEGER_TYPES:
                out.append(("bit", "bitfields need an integer data_type"))
            elif self.bit + self.bit_count > bit_width(self.data_type):
                out.append(("bit_count", f"bits {self.bit}..{self.bit + self.bit_count - 1} "
                                         f"do not fit in {self.data_type}"))
        if self.data_type != "string" and self.length != 1:
            out.append(("length", "length is only for strings"))
        if self.scale == 0:
            out.append(("scale", "must not be 0"))
        return out


class Device(Model):
    """A unit id on the connection with its register map and (optionally) its own schedule."""

    name: str = Field(pattern=f"^(?:{_ID})$")
    points: tuple[Point, ...] = Field(min_length=1)
    unit_id: int = Field(1, ge=0, le=255)
    poll_interval: Duration | None = Field(None, gt=0)
    max_gap: int | None = Field(None, ge=0, le=MAX_REGISTERS)


class Config(Model):
    """``[[drivers]] kind = "modbus"``."""

    kind: Literal["modbus"]
    name: str = Field(pattern=f"^(?:{_ID})$")
    devices: tuple[Device, ...] = Field(min_length=1)
    poll_interval: Duration = Field(1.0, gt=0)
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = ""
    port: int = Field(502, ge=1, le=65535)
    serial_port: str = ""
    baudrate: int = Field(19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Duration = Field(1.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=10)
    max_gap: int = Field(10, ge=0, le=MAX_REGISTERS)
    max_registers: int = Field(MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    max_bits: int = Field(MAX_BITS, ge=1, le=MAX_BITS)
    # A unit that stops answering while others on the connection do is probed (one request)
    # with growing gaps, from 10 timeouts (at least its poll interval) up to this.
    silent_unit_probe: Duration = Field(60.0, gt=0, le=3600)

    def waveform_sources(self) -> tuple[str, ...]:
        return ()  # registers are scalar readings

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.transport == "tcp" and not self.host:
            out.append(("host", "is required for transport \"tcp\""))
        if self.transport == "rtu" and not self.serial_port:
            out.append(("serial_port", "is required for transport \"rtu\""))
        seen: dict[str, str] = {}
        names: set[str] = set()
        for d_i, dev in enumerate(self.devices):
            if dev.name in names:
                out.append((f"devices[{d_i}].name", f"duplicate device {dev.name!r}"))
            names.add(dev.name)
            if dev.poll_interval is not None and dev.poll_interval < self.poll_interval:
                out.append((f"devices[{d_i}].poll_interval",
                            f"must be >= the driver's poll_interval ({self.poll_interval}s)"))
            for p_i, p in enumerate(dev.points):
                key = f"devices[{d_i}].points[{p_i}]"
                if p.sensor_id in seen:
                    out.append((f"{key}.sensor_id",
                                f"duplicate sensor_id (also in {seen[p.sensor_id]})"))
                seen.setdefault(p.sensor_id, key)
                limit = self.max_bits if p.table in BIT_TABLES else self.max_registers
                if p.spec().count > limit:
                    out.append((f"{key}.length", f"spans more than {limit} registers"))
        return out


def create(cfg: Config) -> ModbusDriver:
    return ModbusDriver(cfg)


_FLOAT = frozenset({float})


def _exception_name(code: int) -> str:
    try:
        return ExcCodes(code).name
    except ValueError:
        return f"CODE_{code}"


class ModbusDriver:
    """Polled driver: one :meth:`read` reads every device that is due, block by block."""

    streaming = False

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._health = DriverHealth(cfg.name, "modbus")
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._devices: list[UnitState] = []
        # (device name, block) -> its decoding plan (codec.block_plan), made at first use
        self._plans: dict[tuple[str, Block], BlockPlan | None] = {}
        for dev in cfg.devices:
            specs = [p.spec() for p in dev.points]
            gap = cfg.max_gap if dev.max_gap is None else dev.max_gap
            blocks = coalesce(specs, max_gap=gap, max_registers=cfg.max_registers,
                              max_bits=cfg.max_bits)
            unit = UnitState(dev, specs, blocks, float(dev.poll_interval or cfg.poll_interval))
            unit.sensors = [Sensor(p.sensor_id, p.sensor_type, p.unit, {
                "source": "modbus", "device": dev.name, "unit_id": dev.unit_id,
                "register": f"{p.table}:{p.address}"}) for p in dev.points]
            unit.fast = [fast_format(sp) for sp in specs]
            self._devices.append(unit)
        self._health.detail["blocks"] = sum(len(d.blocks) for d in self._devices)
        self._health.detail["points"] = sum(len(d.specs) for d in self._devices)

    # -- lifecycle -------------------------------------------------------------------------
    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        c = self.cfg
        # reconnect_delay=0: pymodbus must not reconnect on its own; the agent does, with a
        # fresh client, so a half-dead client is never reused.
        if c.transport == "tcp":
            return AsyncModbusTcpClient(c.host, port=c.port, timeout=float(c.timeout),
                                        retries=c.retries, reconnect_delay=0,
                                        name=f"modbus:{c.name}")
        return AsyncModbusSerialClient(c.serial_port, baudrate=c.baudrate, parity=c.parity,
                                       stopbits=c.stopbits, bytesize=c.bytesize,
                                       timeout=float(c.timeout), retries=c.retries,
                                       reconnect_delay=0, name=f"modbus:{c.name}")

    async def open(self) -> None:
        await self.close()
        client = self._new_client()
        self._client = client
        where = (f"{self.cfg.host}:{self.cfg.port}" if self.cfg.transport == "tcp"
                 else self.cfg.serial_port)
        try:
            async with asyncio.timeout(float(self.cfg.timeout) + 5.0):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        if not ok:
            await self.close()
            self._health.error("connect")
            raise DriverDisconnected(f"modbus {self.name}: cannot connect to {where}")
        self._health.connected = True
        now = time.monotonic()
        for d in self._devices:
            d.next_due = now

    async def close(self) -> None:
        client, self._client = self._client, None
        self._health.connected = False
        if client is not None:
            client.close()  # synchronous: closes the transport, cancels nothing of ours
            await asyncio.sleep(0)  # let the transport's connection_lost run

    def health(self) -> DriverHealth:
        return self._health

    # -- polling ---------------------------------------------------------------------------
    async def read(self) -> DriverOutput:
        client = self._client
        if client is None or not client.connected:
            self._health.connected = False
            raise DriverDisconnected(f"modbus {self.name}: not connected")
        now = time.monotonic()
        # A device is due when its slot has come, with half a driver tick of tolerance so the
        # scheduler's jitter never makes it skip a whole tick.
        slack = float(self.cfg.poll_interval) / 2
        out = ReadingBlock([], [], [], [])  # every point read, as columns
        answered = polled = 0
        for d in self._devices:
            if now + slack < d.next_due:
                continue
            n = await self._poll_device(client, d, out)
            answered += n
            polled += 1
            self._schedule(d, n, now, slack)
        if answered:
            # A good read is one the peer answered (values or exception responses); a poll in
            # which every request timed out is not, so the supervisor's backoff keeps growing.
            self._health.ok(len(out) - out.values.count(None))
        elif polled and all(d.silent >= SILENT_POLLS_DEAD for d in self._devices):
            self._health.error("no_answer")
            raise DriverDisconnected(f"modbus {self.name}: no unit answered the last "
                                     f"{SILENT_POLLS_DEAD} polls (connection accepted but silent)")
        return [out] if len(out) else []

    def _schedule(self, d: UnitState, answered: int, now: float, slack: float) -> None:
        c = self.cfg
        schedule(self._devices, d, answered, now, slack, driver=self.name,
                 request_s=float(c.timeout) * (c.retries + 1),
                 probe_max=float(c.silent_unit_probe))
        self._health.detail["silent_units"] = sorted(x.device.name for x in self._devices
                                                     if x.silent)

    async def _poll_device(self, client: Any, d: UnitState, out: ReadingBlock) -> int:
        """Add the device's readings to ``out``; how many of its requests were answered. A unit
        that did not answer its last poll gets one request (a probe); its other points are
        reported quality 0 without asking until it answers."""
        answered = 0
        i = 0
        while i < len(d.blocks):
            block = d.blocks[i]
            ts = time.time()
            if d.silent and i > 0 and not answered:
                reason = f"timeout: unit {d.device.unit_id} not answering (probed less often)"
                self._decode_block(d, block, None, reason, ts, out)
                i += 1
                continue
            words, reason, code = await self._read_block(client, d.device.unit_id, block)
            answered += not reason.startswith("timeout")
            if code == ExcCodes.ILLEGAL_ADDRESS and len(block.members) > 1:
                # One invalid address inside a coalesced range: read its points one by one
                # from now on, and right away.
                log.warning("block refused; splitting into single reads",
                            extra={"driver": self.name, "device": d.device.name,
                                   "table": block.table, "start": block.start,
                                   "count": block.count})
                singles = [Block(block.table, d.specs[m].address, d.specs[m].count, (m,))
                           for m in block.members]
                d.blocks[i:i + 1] = singles
                self._health.detail["blocks"] = sum(len(x.blocks) for x in self._devices)
                continue
            self._decode_block(d, block, words, reason, ts, out)
            i += 1
        return answered

    async def _read_block(self, client: Any, unit: int, block: Block
                          ) -> tuple[list[int] | list[bool] | None, str, int | None]:
        """Words read, or ``None`` with the reason (and exception code when there is one)."""
        fn = {"holding": client.read_holding_registers, "input": client.read_input_registers,
              "coil": client.read_coils, "discrete_input": client.read_discrete_inputs
              }[block.table]
        limit = float(self.cfg.timeout) * (self.cfg.retries + 1) + 2.0
        try:
            async with asyncio.timeout(limit):
                rr = await fn(block.start, count=block.count, device_id=unit)
        except ConnectionException as exc:
            self._health.error("connection")
            raise DriverDisconnected(f"modbus {self.name}: {exc}") from exc
        except (ModbusIOException, TimeoutError) as exc:
            if not client.connected:
                self._health.error("connection")
                raise DriverDisconnected(f"modbus {self.name}: connection lost ({exc})") from exc
            self._health.error("timeout")
            return None, f"timeout: no response from unit {unit}", None
        except ModbusException as exc:
            self._health.error("protocol")
            return None, f"protocol error: {exc}", None
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0))
            self._health.error(f"exception_{_exception_name(code).lower()}")
            return None, f"exception {code} ({_exception_name(code)}) from unit {unit}", code
        words: list[int] | list[bool] = (list(rr.bits[:block.count]) if block.table in BIT_TABLES
                                         else list(rr.registers))
        if len(words) < block.count:
            self._health.error("short_response")
            return None, f"short response: {len(words)} of {block.count} words", None
        return words, "", None

    def _decode_block(self, d: UnitState, block: Block,
                      words: list[int] | list[bool] | None, reason: str, ts: float,
                      out: ReadingBlock) -> None:
        """Append the block's points to ``out`` (one row each; strings go to health)."""
        health = self._health
        if words is None:
            decoded: list[Any] = [None] * len(block.members)
        else:
            key = (d.device.name, block)
            plan = self._plans.get(key)
            if plan is None and key not in self._plans:
                plan = self._plans[key] = block_plan(block, d.specs, d.fast)
            decoded = decode_members(block, d.specs, d.fast, words, plan)
            if _FLOAT.issuperset(map(type, decoded)):  # every member a number: column-wise
                if health.bad_points:
                    for m in block.members:
                        health.bad_points.pop(d.device.points[m].sensor_id, None)
                out.sensors.extend(map(d.sensors.__getitem__, block.members))
                out.values.extend(cast(list[float], decoded))
                out.timestamps.extend(repeat(ts, len(decoded)))
                out.quality.extend(repeat(QUALITY_GOOD, len(decoded)))
                return
        for m, value in zip(block.members, decoded, strict=True):
            p = d.device.points[m]
            if isinstance(value, str):
                # Strings (serial numbers, firmware) are not measurements: kept in health.
                texts = health.detail.setdefault("text", {})
                assert isinstance(texts, dict)
                texts[p.sensor_id] = value
                continue
            if type(value) is float:
                health.bad_points.pop(p.sensor_id, None)
            else:  # None (no answer) or a DecodeError
                why = reason
                if isinstance(value, DecodeError):
                    health.error("decode")
                    why = f"decode error: {value}"
                health.bad_points[p.sensor_id] = why
                out.metadata[len(out.sensors)] = {**d.sensors[m].metadata, "reason": why}
                value = None
            out.sensors.append(d.sensors[m])
            out.values.append(value)
            out.timestamps.append(ts)
            out.quality.append(QUALITY_GOOD if value is not None else QUALITY_BAD)


__all__ = ["Config", "Device", "DriverError", "ModbusDriver", "Point", "create"]
