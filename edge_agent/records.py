"""Shared record types: the only data shapes that cross layer boundaries.

Every layer (drivers, models, sync, agent) may import this module; it imports nothing of the
project but :mod:`edge_agent.timestamps`. Shapes follow ``../shared/contracts/ingest-api.md``.

Timestamps are POSIX seconds (float, UTC) in memory; their formatting and parsing live in
:mod:`edge_agent.timestamps` (re-exported here: :func:`format_ts`, :func:`format_us`,
:func:`parse_ts`, :func:`to_us`, :func:`from_us`, :func:`now`).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt

from edge_agent.timestamps import MAX_TS, format_ts, format_us, from_us, now, parse_ts, to_us

__all__ = ["QUALITY_BAD", "QUALITY_GOOD", "QUALITY_UNCERTAIN", "Event", "FeatureVector",
           "Layouts", "ModelRef", "Reading", "ReadingBlock", "Record", "Sensor", "Severity",
           "WaveformBlock", "expand", "format_ts", "format_us", "from_us", "now", "parse_ts",
           "to_us"]

Severity = Literal["info", "warning", "critical"]

QUALITY_GOOD = 1.0
QUALITY_UNCERTAIN = 0.5
QUALITY_BAD = 0.0


@dataclass(slots=True)
class Reading:
    """One scalar value from a sensor or PLC tag.

    ``value`` is ``None`` when the source gave nothing usable; then ``quality`` is 0 and
    ``metadata["reason"]`` says why. Use :meth:`sanitised` before buffering: NaN/Inf never leave
    the agent.
    """

    sensor_id: str
    sensor_type: str
    value: float | None
    unit: str
    timestamp: float
    quality: float = QUALITY_GOOD
    metadata: dict[str, Any] = field(default_factory=dict)

    def sanitised(self) -> Reading:
        v = self.value
        if v is None:
            if self.quality != QUALITY_BAD or "reason" not in self.metadata:
                meta = dict(self.metadata)
                meta.setdefault("reason", "no value")
                return Reading(self.sensor_id, self.sensor_type, None, self.unit, self.timestamp,
                               QUALITY_BAD, meta)
            return self
        fv = float(v)
        if math.isfinite(fv):
            q = min(1.0, max(0.0, float(self.quality)))
            if fv is v and q == self.quality:
                return self
            return Reading(self.sensor_id, self.sensor_type, fv, self.unit, self.timestamp, q,
                           self.metadata)
        meta = dict(self.metadata)
        meta["reason"] = f"non-finite value {fv!r}"
        return Reading(self.sensor_id, self.sensor_type, None, self.unit, self.timestamp,
                       QUALITY_BAD, meta)


@dataclass(frozen=True, slots=True, eq=False)
class Sensor:
    """What stays the same across one sensor's readings: ids, unit and static metadata.

    Made once per configured point by a driver and shared by all its :class:`ReadingBlock` rows,
    so the gate and the buffer can cache per sensor (compared by identity). ``metadata`` must
    not be changed once the sensor exists."""

    sensor_id: str
    sensor_type: str
    unit: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (type(self.sensor_id) is str and self.sensor_id and type(self.sensor_type) is str
                and type(self.unit) is str and isinstance(self.metadata, Mapping)):
            raise TypeError(f"bad sensor fields: {self.sensor_id!r}, {self.sensor_type!r}, "
                            f"{self.unit!r}")


@dataclass(slots=True)
class ReadingBlock:
    """Scalar readings of one driver read as columns: row ``i`` is ``sensors[i]``'s value at
    ``timestamps[i]`` with ``quality[i]``. A row listed in ``metadata`` carries its own
    metadata (replacing the sensor's, e.g. with the ``reason`` of a ``None`` value).

    The hot path (gate, buffer) handles a block without one Python object per reading; a row
    that is not a clean float, finite timestamp and quality is handled as a :class:`Reading`
    (:meth:`row`), so a bad row costs itself only."""

    sensors: list[Sensor]
    values: list[float | None]
    timestamps: list[float]
    quality: list[float]
    metadata: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sensors)

    def row(self, i: int) -> Reading:
        s = self.sensors[i]
        meta = self.metadata.get(i)
        return Reading(s.sensor_id, s.sensor_type, self.values[i], s.unit, self.timestamps[i],
                       self.quality[i], dict(s.metadata) if meta is None else meta)

    def readings(self) -> list[Reading]:
        return [self.row(i) for i in range(len(self.sensors))]

    def plain(self) -> bool:
        """Every row is the usual one — a :class:`Sensor`, a finite float, quality 1.0, a float
        timestamp from 1970-01-01T00:00:01 to before the year 10000 — and none has metadata
        of its own. Checked column by column in C (``set``/``map``/``sum``), so the gate and
        the buffer can then handle the block without a Python loop per row. (A quality that
        equals 1.0 without being a float, e.g. ``1``, is stored as 1.0 on either path.)"""
        v, ts, q = self.values, self.timestamps, self.quality
        n = len(v)
        if not n or self.metadata or not len(ts) == len(q) == len(self.sensors) == n \
                or q.count(1.0) != n:
            return False
        if set(map(type, v)) != _FLOAT or set(map(type, ts)) != _FLOAT \
                or set(map(type, self.sensors)) != _SENSOR:
            return False
        # NaN or Inf anywhere make a sum non-finite (an overflow only costs the fast path)
        total, distinct = sum(cast(list[float], v)), set(ts)
        span = sum(distinct)
        return (total - total == 0.0 and span - span == 0.0 and 1.0 <= min(distinct)
                and max(distinct) < MAX_TS)

    def take(self, rows: Sequence[int]) -> ReadingBlock:
        """The block of ``rows`` only (in that order)."""
        meta = {k: self.metadata[i] for k, i in enumerate(rows) if i in self.metadata}
        return ReadingBlock([self.sensors[i] for i in rows], [self.values[i] for i in rows],
                            [self.timestamps[i] for i in rows], [self.quality[i] for i in rows],
                            meta)


_FLOAT: set[type] = {float}
_SENSOR: set[type] = {Sensor}
T = TypeVar("T")


class Layouts(Generic[T]):
    """What a consumer derives from a block's sensor list (ids, JSON pieces…), made once per
    distinct list: a driver sends the same sensors in the same order read after read. A hit
    is confirmed by comparing the lists (identity per :class:`Sensor`, in C); the cached lists
    keep their sensors alive, so an ``id`` is never reused while cached."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._cache: dict[tuple[int, int, int], tuple[list[Sensor], T]] = {}

    def get(self, sensors: list[Sensor], make: Callable[[list[Sensor]], T]) -> T:
        key = (len(sensors), id(sensors[0]), id(sensors[-1])) if sensors else (0, 0, 0)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == sensors:
            return hit[1]
        value = make(sensors)
        if len(self._cache) >= self._size:
            self._cache.clear()
        self._cache[key] = (list(sensors), value)
        return value


def weight(record: object) -> int:
    """What a record counts for in queues and commit groups: a block its rows, anything else 1."""
    return len(record) if type(record) is ReadingBlock else 1


def expand(records: Sequence[Any]) -> list[Any]:
    """``records`` with every :class:`ReadingBlock` replaced by its readings, in order."""
    out: list[Any] = []
    for r in records:
        if isinstance(r, ReadingBlock):
            out.extend(r.readings())
        else:
            out.append(r)
    return out


@dataclass(slots=True)
class WaveformBlock:
    """A contiguous block of samples from one waveform source.

    ``samples`` has shape ``(n_samples, n_channels)``; ``channels`` names the columns (e.g.
    ``("h", "v")``) and becomes the feature prefix. ``start`` is the time of the first sample.
    """

    source_id: str
    sample_rate: float
    channels: tuple[str, ...]
    start: float
    samples: npt.NDArray[np.float64]
    unit: str = "g"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def end(self) -> float:
        return self.start + self.n_samples / self.sample_rate


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str


@dataclass(slots=True)
class FeatureVector:
    """Features computed over one window, optionally scored by an anomaly model."""

    source_id: str
    window_start: float
    window_end: float
    values: dict[str, float]
    model: ModelRef | None = None
    score: float | None = None
    is_anomaly: bool | None = None


@dataclass(slots=True)
class Event:
    """An alert (``anomaly_raised`` / ``anomaly_cleared``) or an operational event."""

    kind: str
    source_id: str
    timestamp: float
    severity: Severity = "info"
    details: dict[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)


Record = Reading | ReadingBlock | WaveformBlock | FeatureVector | Event
