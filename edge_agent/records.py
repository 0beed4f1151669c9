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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_agent.timestamps import format_ts, format_us, from_us, now, parse_ts, to_us

__all__ = ["QUALITY_BAD", "QUALITY_GOOD", "QUALITY_UNCERTAIN", "Event", "FeatureVector",
           "ModelRef", "Reading", "Record", "Severity", "WaveformBlock", "format_ts", "format_us",
           "from_us", "now", "parse_ts", "to_us"]

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


Record = Reading | WaveformBlock | FeatureVector | Event
