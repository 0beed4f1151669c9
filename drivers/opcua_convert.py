"""OPC-UA DataValue → records: quality from the status code, the best timestamp, waveforms.

Pure functions (no client, no I/O), unit tested on their own.

* Quality: Good 1.0, Uncertain 0.5, Bad 0.0; the status name is kept in ``metadata["status"]``.
  A Bad value is delivered as ``value=None`` with ``metadata["reason"]``.
* Timestamp: the source timestamp when the server gives one, else the server timestamp, else
  local time; ``metadata["ts_source"]`` says which.
"""

from __future__ import annotations

import math
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from asyncua import ua

from edge_agent.errors import DecodeError
from edge_agent.records import (
    QUALITY_BAD,
    QUALITY_GOOD,
    QUALITY_UNCERTAIN,
    Reading,
    ReadingBlock,
    Sensor,
    WaveformBlock,
)

if TYPE_CHECKING:
    from edge_agent.drivers.base import DriverHealth
    from edge_agent.drivers.opcua_items import Item

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# OPC-UA "no timestamp" is the FILETIME epoch (1601) or None; treat anything before 1980 as unset.
_MIN_VALID = datetime(1980, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What the converter needs about one configured node."""

    sensor_id: str
    sensor_type: str
    unit: str
    node: str                       # NodeId string as resolved (for metadata)
    waveform: bool = False
    channels: tuple[str, ...] = ("x",)
    timestamp_at: str = "end"       # waveform: the stamp is the block's start (first sample)
                                    # or its end (one sample period after the last sample)


def quality_of(status: ua.StatusCode | None) -> float:
    if status is None or status.is_good():
        return QUALITY_GOOD
    if status.is_uncertain():
        return QUALITY_UNCERTAIN
    return QUALITY_BAD


_INFO_TYPE_MASK = 0x0C00           # StatusCode InfoType bits ...
_INFO_TYPE_DATAVALUE = 0x0400      # ... "DataValue": the info bits below are meaningful
_OVERFLOW = 0x0080                 # the server's queue overflowed; values were discarded


def status_name(status: ua.StatusCode | None) -> str:
    """The symbolic name of the status code (info bits such as Overflow left out)."""
    if status is None:
        return "Good"
    code = int(status.value) & 0xFFFF0000
    try:
        return str(ua.StatusCode(ua.UInt32(code)).name)
    except (AttributeError, KeyError):
        return f"0x{int(status.value):08X}"


def overflowed(status: ua.StatusCode | None) -> bool:
    """The Overflow info bit (OPC 10000-4, 7.39.1): the server discarded older values."""
    if status is None:
        return False
    v = int(status.value)
    return (v & _INFO_TYPE_MASK) == _INFO_TYPE_DATAVALUE and bool(v & _OVERFLOW)


def _posix(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if dt < _MIN_VALID:
        return None
    return (dt - _EPOCH).total_seconds()


def timestamp_of(dv: ua.DataValue, local: float) -> tuple[float, str]:
    """(POSIX seconds, "source" | "server" | "local")."""
    ts = _posix(dv.SourceTimestamp)
    if ts is not None:
        return ts, "source"
    ts = _posix(dv.ServerTimestamp)
    if ts is not None:
        return ts, "server"
    return local, "local"


def _raw_value(dv: ua.DataValue) -> Any:
    return None if dv.Value is None else dv.Value.Value


def _scalar(value: Any) -> tuple[float | None, str]:
    """A finite-or-not float, or None with the reason."""
    if value is None:
        return None, "no value"
    if isinstance(value, bool):
        return (1.0 if value else 0.0), ""
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value), ""
    if isinstance(value, list | tuple | np.ndarray):
        return None, "array value on a scalar node (set waveform = true)"
    return None, f"non-numeric value of type {type(value).__name__}"


def to_reading(spec: NodeSpec, dv: ua.DataValue, local: float) -> Reading:
    """One scalar reading; Bad status or an unusable value gives ``value=None`` + reason."""
    status = dv.StatusCode
    q = quality_of(status)
    name = status_name(status)
    ts, ts_src = timestamp_of(dv, local)
    meta: dict[str, Any] = {"source": "opcua", "node": spec.node, "status": name,
                            "ts_source": ts_src}
    if q == QUALITY_BAD:
        meta["reason"] = f"status {name}"
        return Reading(spec.sensor_id, spec.sensor_type, None, spec.unit, ts, QUALITY_BAD, meta)
    value, why = _scalar(_raw_value(dv))
    if value is None:
        meta["reason"] = why
        return Reading(spec.sensor_id, spec.sensor_type, None, spec.unit, ts, QUALITY_BAD, meta)
    return Reading(spec.sensor_id, spec.sensor_type, value, spec.unit, ts, q, meta).sanitised()


class WaveformError(DecodeError):
    """An array that cannot become a waveform block (Bad status, shape, no sample rate)."""


def to_waveform(spec: NodeSpec, dv: ua.DataValue, sample_rate: float | None,
                local: float) -> WaveformBlock:
    """An array node's value as a ``(n_samples, n_channels)`` block (interleaved channels)."""
    status = dv.StatusCode
    if quality_of(status) == QUALITY_BAD:
        raise WaveformError(f"status {status_name(status)}")
    if sample_rate is None or not np.isfinite(sample_rate) or sample_rate <= 0:
        raise WaveformError(f"sample rate unknown or invalid ({sample_rate!r})")
    raw = _raw_value(dv)
    if not isinstance(raw, list | tuple | np.ndarray):
        raise WaveformError(f"expected an array, got {type(raw).__name__}")
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise WaveformError(f"array is not numeric: {exc}") from exc
    n_ch = len(spec.channels)
    if arr.ndim == 2 and arr.shape[1] == n_ch:
        samples = arr
    elif arr.ndim == 1 and arr.size % n_ch == 0 and arr.size > 0:
        samples = arr.reshape(-1, n_ch)
    else:
        raise WaveformError(f"array of shape {arr.shape} does not split into {n_ch} channel(s)")
    if not np.all(np.isfinite(samples)):
        raise WaveformError("array holds NaN or Inf")
    ts, ts_src = timestamp_of(dv, local)
    n = samples.shape[0]
    # "end": the stamp is when the buffer filled, i.e. the block's end = start + n / rate
    # (WaveformBlock.end), one sample period after the last sample's own time
    start = ts - n / sample_rate if spec.timestamp_at == "end" else ts
    meta: dict[str, Any] = {"source": "opcua", "node": spec.node, "status": status_name(status),
                            "ts_source": ts_src, "quality": quality_of(status)}
    return WaveformBlock(spec.sensor_id, float(sample_rate), tuple(spec.channels), start,
                         np.ascontiguousarray(samples), spec.unit or "g", meta)


def to_rate(dv: ua.DataValue) -> float | None:
    """A sample-rate node's value, or None when unusable."""
    if quality_of(dv.StatusCode) == QUALITY_BAD:
        return None
    value, _ = _scalar(_raw_value(dv))
    if value is None or not np.isfinite(value) or value <= 0:
        return None
    return value


def bad_reading(spec: NodeSpec, reason: str, local: float, status: str = "") -> Reading:
    meta: dict[str, Any] = {"source": "opcua", "node": spec.node, "reason": reason}
    if status:
        meta["status"] = status
    return Reading(spec.sensor_id, spec.sensor_type, None, spec.unit, local, QUALITY_BAD, meta)


def group_by(items: Sequence[Any], key: Any) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def count_dropped(health: DriverHealth, n: int) -> None:
    """``n`` pending values dropped for a stalled consumer (the oldest); 0: nothing."""
    if n:
        health.errors["dropped_backlog"] += n
        health.detail["dropped_backlog"] = health.errors["dropped_backlog"]


def count_overflow(health: DriverHealth, sensor_id: str) -> None:
    """The server discarded values of the node before this one (its queue was full)."""
    health.error("overflow")
    overflows = health.detail.setdefault("overflows", {})
    assert isinstance(overflows, dict)
    overflows[sensor_id] = overflows.get(sensor_id, 0) + 1


class ScalarRows:
    """The usual scalar notification — status exactly Good, a number, a source timestamp — as
    a row of one :class:`ReadingBlock` (no Reading, no metadata dict per value); everything
    else goes through :func:`to_reading`. At most ``limit`` rows wait for the consumer: beyond
    that the oldest are dropped and counted in ``dropped_backlog`` like other records."""

    def __init__(self, limit: int, health: DriverHealth) -> None:
        self.limit = limit
        self.health = health
        self.block = ReadingBlock([], [], [], [])

    def __len__(self) -> int:
        return len(self.block.sensors)

    def add(self, it: Item, dv: ua.DataValue) -> bool:
        if it.rate_for is not None or it.spec.waveform:
            return False
        st = dv.StatusCode
        if st is not None and st.value != 0:  # not plain Good (info bits such as Overflow too)
            return False
        v = None if dv.Value is None else dv.Value.Value
        if type(v) is not float and type(v) is not int:  # bool, None, arrays, text: slow path
            return False
        if not math.isfinite(v):  # NaN/inf: a bad value, counted and named on the slow path
            return False
        ts = _posix(dv.SourceTimestamp)
        if ts is None:
            return False
        s = it.sensor
        if s is None:
            sp = it.spec
            s = it.sensor = Sensor(sp.sensor_id, sp.sensor_type, sp.unit, {
                "source": "opcua", "node": sp.node, "status": "Good", "ts_source": "source"})
        b = self.block
        b.sensors.append(s)
        b.values.append(float(v))
        b.timestamps.append(ts)
        b.quality.append(QUALITY_GOOD)
        if self.health.bad_points:
            self.health.bad_points.pop(s.sensor_id, None)
        if len(b.sensors) > self.limit:
            over = len(b.sensors) - self.limit
            del b.sensors[:over], b.values[:over], b.timestamps[:over], b.quality[:over]
            count_dropped(self.health, over)
        return True

    def close_into(self, pending: MutableSequence[Any]) -> None:
        """Append the rows so far to ``pending`` as one block (before a record that came after
        them); the next rows start a new block."""
        if self.block.sensors:
            pending.append(self.block)
            self.block = ReadingBlock([], [], [], [])

    def take(self) -> list[ReadingBlock]:
        """The rows so far as one block (``[]`` if none); the next rows start a new one."""
        if not self.block.sensors:
            return []
        out, self.block = self.block, ReadingBlock([], [], [], [])
        return [out]

