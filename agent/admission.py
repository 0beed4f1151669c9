"""What may enter the buffer: readings checked one by one before they are committed.

A driver bug or a lying PLC must cost one reading, never the batch it travels with (the buffer
refuses a whole put that holds a malformed record). :class:`ReadingGate`:

* sanitises values (NaN/Inf → ``value = None``, quality 0, reason in metadata);
* drops readings that cannot be stored or sent — empty or non-string ids, timestamps that are
  not finite or not between 1970 and the year 10000 (``edge_agent.timestamps``) — counting
  them per sensor;
* drops a reading whose ``(sensor_id, timestamp)`` was already admitted recently: a polled
  OPC-UA node returns the same SourceTimestamp until its value changes, and a reconnect
  re-delivers the last value. The backend's primary key is ``(timestamp, sensor_id)``, so such a
  repeat is the same sample, and sending it would make the backend answer 409 for the whole
  batch (split until the conflicting row stands alone, but still a wasted round trip). The
  newest timestamp per sensor committed to the buffer is kept there and given to the gate at
  start (``Buffer.last_timestamps``), so a repeat of a sample stored before a restart is
  dropped too. Timestamps are compared in whole microseconds, as the backend stores them.

Drop counts are kept per sensor for metrics; the first drop of each kind per sensor is returned
as an event, so one misbehaving tag does not flood the event table.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

from edge_agent.records import Event, Reading
from edge_agent.timestamps import MAX_TS, MIN_TS

_RECENT = 8                  # timestamps remembered per sensor for the repeat check


class ReadingGate:
    def __init__(self, last_us: Mapping[str, int] | None = None) -> None:
        """``last_us``: the newest timestamp (µs) already stored per sensor (from the buffer)."""
        self._recent: dict[str, deque[int]] = {
            sensor: deque([us], maxlen=_RECENT) for sensor, us in (last_us or {}).items()}
        self.dropped: Counter[str] = Counter()       # "<reason>:<sensor_id>" -> count
        self.latest: dict[str, float] = {}           # last good value per sensor

    def admit(self, batch: Sequence[Any], now: float) -> tuple[list[Reading], list[Event]]:
        out: list[Reading] = []
        events: list[Event] = []
        for raw in batch:
            reason = _malformed(raw)
            sensor = raw.sensor_id if isinstance(getattr(raw, "sensor_id", None), str) else "?"
            if reason is None:
                recent = self._recent.setdefault(sensor, deque(maxlen=_RECENT))
                us = round(raw.timestamp * 1_000_000)
                if us in recent:
                    reason = "repeated_timestamp"
                else:
                    recent.append(us)
            if reason is not None:
                key = f"{reason}:{sensor}"
                self.dropped[key] += 1
                if self.dropped[key] == 1:
                    events.append(Event("reading_dropped", sensor, now, "warning"
                                        if reason != "repeated_timestamp" else "info",
                                        {"reason": reason, "first": True}))
                continue
            r = raw.sanitised()
            if r.value is not None:
                self.latest[r.sensor_id] = r.value
            out.append(r)
        return out, events

    def stats(self) -> dict[str, int]:
        return dict(self.dropped)


def _malformed(r: Any) -> str | None:
    if (type(r) is Reading and type(r.sensor_id) is str and r.sensor_id
            and type(r.sensor_type) is str and type(r.unit) is str and type(r.metadata) is dict
            and type(r.timestamp) is float and MIN_TS <= r.timestamp < MAX_TS
            and (r.value is None or type(r.value) is float)):
        return None  # the usual reading, checked without the numbers ABCs (they are slow)
    if not isinstance(r, Reading):
        return "not_a_reading"
    if not isinstance(r.sensor_id, str) or not r.sensor_id:
        return "bad_sensor_id"
    if not isinstance(r.sensor_type, str) or not isinstance(r.unit, str):
        return "bad_type_or_unit"
    ts = r.timestamp
    if not isinstance(ts, numbers.Real) or isinstance(ts, bool) or not math.isfinite(ts) \
            or not MIN_TS <= ts < MAX_TS:
        return "bad_timestamp"
    if not isinstance(r.metadata, dict):
        return "bad_metadata"
    if r.value is not None and not isinstance(r.value, numbers.Real):
        return "bad_value"  # numbers (bools and numpy scalars included) or None only
    return None
