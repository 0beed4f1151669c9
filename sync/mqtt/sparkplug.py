"""Sparkplug B 3.0 edge node model: topics, bdSeq, seq, aliases, birth/data/death payloads.

Pure state and encoding; the MQTT side is :mod:`.sparkplug_sink`. Payloads are built with the
``protobuf`` package from :file:`sparkplug_b.proto` (written from the specification).

* ``bdSeq`` (0-255) is taken from a file in the state directory for each new MQTT session, so
  the NDEATH will and the NBIRTH carry the same value and it keeps counting across restarts.
* ``seq`` (0-255, wrapping) is 0 in NBIRTH and goes up by one with each later message of the
  node (DBIRTH, DDATA, DDEATH); it is stamped at publish time (:func:`with_seq`) so a retried
  message never leaves a gap.
* Aliases are unique within the node and stable for the life of the process; births carry name
  and alias, DDATA the alias only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from . import sparkplug_b_pb2 as pb

__all__ = ["BdSeqStore", "Device", "Node", "Update", "with_seq"]

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"

DT_INT64 = pb.Int64
DT_UINT64 = pb.UInt64
DT_DOUBLE = pb.Double
DT_BOOLEAN = pb.Boolean
DT_STRING = pb.String


def ms(ts: float) -> int:
    return round(ts * 1000)


def datatype_of(value: object) -> int:
    if isinstance(value, bool):
        return DT_BOOLEAN
    if isinstance(value, int):
        return DT_INT64
    if isinstance(value, float):
        return DT_DOUBLE
    return DT_STRING


def set_value(m: Any, datatype: int, value: object) -> None:
    if value is None:
        m.is_null = True
    elif datatype == DT_BOOLEAN:
        m.boolean_value = bool(value)
    elif datatype in (DT_INT64, DT_UINT64):
        m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF  # type: ignore[call-overload]
    elif datatype == DT_DOUBLE:
        m.double_value = float(value)  # type: ignore[arg-type]
    else:
        m.string_value = str(value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_seq(payload: bytes, seq: int) -> bytes:
    """``payload`` with field 3 (``seq``) appended: protobuf fields may come in any order."""
    return payload + b"\x18" + _varint(seq)


class BdSeqStore:
    """The next bdSeq, persisted in ``<state_dir>/sparkplug-bdseq`` (0-255, wrapping)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def take(self) -> int:
        try:
            cur = int(self.path.read_text().strip()) % 256
        except (OSError, ValueError):
            cur = 0
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{(cur + 1) % 256}\n")
        os.replace(tmp, self.path)
        return cur


@dataclass
class Metric:
    alias: int
    datatype: int
    value: object
    ts: int


@dataclass
class Device:
    id: str
    metrics: dict[str, Metric] = field(default_factory=dict)
    born: bool = False
    dead: bool = False  # DDEATH published (its PLC is disconnected)


@dataclass(frozen=True)
class Update:
    """One metric value for a device (from a buffered row)."""

    device: str
    name: str
    value: object
    ts: float
    historical: bool = False


class Node:
    """The edge node's state: devices, metrics, aliases, payload building."""

    def __init__(self, group_id: str, node_id: str) -> None:
        self.group_id = group_id
        self.node_id = node_id
        self.devices: dict[str, Device] = {}
        self._next_alias = 1  # 0 is left for the node's own metrics below
        self.node_aliases = {BDSEQ: 0, REBIRTH: 0}

    # -- topics ------------------------------------------------------------------------------
    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group_id}/{kind}/{self.node_id}"
        return f"{base}/{device}" if device is not None else base

    # -- state ---------------------------------------------------------------------------------
    def device(self, device_id: str) -> Device:
        d = self.devices.get(device_id)
        if d is None:
            d = self.devices[device_id] = Device(device_id)
        return d

    def apply(self, updates: Iterable[Update]) -> dict[str, list[tuple[Update, Metric]]]:
        """Record updates; per device the (update, metric) pairs for a DDATA. A metric seen for
        the first time gets an alias and marks its device as needing a (re)birth."""
        out: dict[str, list[tuple[Update, Metric]]] = {}
        for u in updates:
            d = self.device(u.device)
            m = d.metrics.get(u.name)
            t = ms(u.ts)
            if m is None:
                dt = datatype_of(u.value) if u.value is not None else DT_DOUBLE
                m = d.metrics[u.name] = Metric(self._next_alias, dt, u.value, t)
                self._next_alias += 1
                d.born = False
            elif not u.historical or t >= m.ts:
                m.value, m.ts = u.value, t
            out.setdefault(u.device, []).append((u, m))
        return out

    # -- payloads ------------------------------------------------------------------------------
    def nbirth(self, bdseq: int) -> bytes:
        """Without ``seq`` (stamped 0 at publish time)."""
        p = pb.Payload(timestamp=ms(time.time()))
        for name, dt, val in ((BDSEQ, DT_INT64, bdseq), (REBIRTH, DT_BOOLEAN, False)):
            m = p.metrics.add(name=name, datatype=dt, timestamp=p.timestamp)
            set_value(m, dt, val)
        return p.SerializeToString()

    def ndeath(self, bdseq: int) -> bytes:
        p = pb.Payload(timestamp=ms(time.time()))
        m = p.metrics.add(name=BDSEQ, datatype=DT_INT64, timestamp=p.timestamp)
        set_value(m, DT_INT64, bdseq)
        return p.SerializeToString()

    def dbirth(self, device_id: str) -> bytes:
        """Without ``seq`` (stamped at publish time): every metric with name and alias."""
        d = self.device(device_id)
        p = pb.Payload(timestamp=ms(time.time()))
        for name, met in d.metrics.items():
            m = p.metrics.add(name=name, alias=met.alias, datatype=met.datatype,
                              timestamp=met.ts)
            set_value(m, met.datatype, met.value)
        d.born, d.dead = True, False
        return p.SerializeToString()

    def ddata(self, pairs: Sequence[tuple[Update, Metric]]) -> bytes:
        """Without ``seq``: alias only, the value and time of each update, historical flag."""
        p = pb.Payload(timestamp=ms(time.time()))
        for u, met in pairs:
            m = p.metrics.add(alias=met.alias, datatype=met.datatype, timestamp=ms(u.ts))
            if u.historical:
                m.is_historical = True
            set_value(m, met.datatype, u.value)
        return p.SerializeToString()

    def ddeath(self, device_id: str) -> bytes:
        d = self.device(device_id)
        d.born, d.dead = False, True
        return pb.Payload(timestamp=ms(time.time())).SerializeToString()


def is_rebirth(payload: bytes) -> bool | None:
    """True for an NCMD asking for a rebirth, False for another valid command, None for
    garbage (not a Sparkplug payload)."""
    try:
        p = pb.Payload.FromString(payload)
    except DecodeError:
        return None
    return any(m.name == REBIRTH and m.HasField("boolean_value") and m.boolean_value
               for m in p.metrics)
