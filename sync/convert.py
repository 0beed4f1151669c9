"""Records → what the buffer stores: readings for packing (:mod:`.pack`) and the contract JSON
of feature vectors and events. Pure functions, no SQLite (run by the buffer's writer thread)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.records import Event, FeatureVector, Reading, format_us, to_us

from .pack import Packer, Run, dumps

_MAX_US = 253_402_300_800_000_000  # year 10000
# What serializing a bad record can raise (wrong types, NaN timestamps, circular or too deep
# details, out-of-range times).
BAD_RECORD = (TypeError, ValueError, AttributeError, ArithmeticError, RecursionError, OSError)


@dataclass
class Converted:
    readings: Run = field(default_factory=Run)
    features: list[tuple[int, str]] = field(default_factory=list)
    events: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_readings(self) -> int:
        return len(self.readings)

    @property
    def n_rows(self) -> int:
        return self.n_readings + len(self.features) + len(self.events)


def _finite(v: float | None) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _us(ts: float, what: str) -> int:
    if not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ValueError(f"{what}: timestamp {ts!r} is not a finite number")
    us = to_us(ts)
    if not 0 <= us < _MAX_US:
        raise ValueError(f"{what}: timestamp {ts!r} out of range")
    return us


def feature_body(f: FeatureVector) -> tuple[int, str]:
    body: dict[str, Any] = {
        "source_id": f.source_id, "window_start": format_us(_us(f.window_start, f.source_id)),
        "window_end": format_us(_us(f.window_end, f.source_id)),
        "values": {str(k): _finite(v) for k, v in f.values.items()},
    }
    if f.model is not None:
        body["model"] = {"name": f.model.name, "version": f.model.version}
    if f.score is not None:
        body["score"] = _finite(f.score)
    if f.is_anomaly is not None:
        body["is_anomaly"] = bool(f.is_anomaly)
    return _us(f.window_start, f.source_id), dumps(body)


def event_body(e: Event) -> tuple[int, str]:
    us = _us(e.timestamp, e.kind)
    body = {"event_id": e.event_id, "kind": e.kind, "source_id": e.source_id,
            "timestamp": format_us(us), "severity": e.severity, "details": e.details}
    return us, dumps(body)


def convert(records: Sequence[object], packer: Packer, out: Converted | None = None
            ) -> Converted:
    """Records to stored form, appended to ``out`` (a new one by default). Raises
    TypeError/ValueError naming the first bad record; ``out`` is then left as it was."""
    out = Converted() if out is None else out
    mark = (len(out.readings), len(out.readings.table), len(out.features), len(out.events))
    done = False
    try:
        others = packer.readings(records, out.readings)
        for rec in others:
            if isinstance(rec, Reading):
                packer.reading(rec, out.readings)
            elif isinstance(rec, FeatureVector):
                out.features.append(feature_body(rec))
            elif isinstance(rec, Event):
                out.events.append(event_body(rec))
            else:
                raise TypeError(f"cannot buffer {type(rec).__name__}: expected Reading, "
                                "ReadingBlock, FeatureVector or Event")
        done = True
    finally:
        if not done:  # this put's rows out again; the others' stay
            out.readings.truncate(mark[0], mark[1])
            del out.features[mark[2]:], out.events[mark[3]:]
    return out
