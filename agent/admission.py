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

A :class:`~edge_agent.records.ReadingBlock` (a driver read as columns) gets the same checks
without a Reading per row: a plain block of distinct sensors, each newer than its newest
admitted sample, passes whole after a few passes in C; otherwise one tight loop keeps the clean
rows as a block and sends the others through the per-reading checks (same counts, same events).
Plain blocks of the same sensor list in a row (a driver polling the same points) are compared
with the previous block's timestamps only; their timestamps join each sensor's recent ones
when anything else is admitted.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import attrgetter, gt, mul
from typing import Any, cast

from edge_agent.records import Event, Layouts, Reading, ReadingBlock, Sensor
from edge_agent.timestamps import MAX_TS, MIN_TS

_RECENT = 8                  # timestamps remembered per sensor for the repeat check
_SENSOR_ID = attrgetter("sensor_id")


class ReadingGate:
    def __init__(self, last_us: Mapping[str, int] | None = None) -> None:
        """``last_us``: the newest timestamp (µs) already stored per sensor (from the buffer)."""
        self._recent: dict[str, deque[int]] = {
            sensor: deque([us], maxlen=_RECENT) for sensor, us in (last_us or {}).items()}
        # The newest timestamp admitted per sensor (every sensor in _recent has one).
        self._newest: dict[str, int] = dict(last_us or {})
        self.dropped: Counter[str] = Counter()       # "<reason>:<sensor_id>" -> count
        self.latest: dict[str, float] = {}           # last good value per sensor
        self._layouts: Layouts[_Ids] = Layouts()  # a block's sensor ids and their deques
        # The sensor list of the last plain blocks admitted whole, with their µs columns not
        # yet added to _recent/_newest (oldest first): the next plain block of the same list
        # only compares with the last column; any other admission applies them first.
        self._pending: _Ids | None = None
        self._pending_us: deque[list[int]] = deque(maxlen=_RECENT)

    def admit(self, batch: Sequence[Any], now: float
              ) -> tuple[list[Reading | ReadingBlock], list[Event]]:
        """The clean records of ``batch`` (readings and reading blocks) and the events of first
        drops. A block's clean rows stay a block; its other rows are checked as readings."""
        out: list[Reading | ReadingBlock] = []
        events: list[Event] = []
        for raw in batch:
            if type(raw) is ReadingBlock:
                self._admit_block(raw, now, out, events)
            else:
                self._admit_one(raw, now, out, events)
        return out, events

    def _admit_one(self, raw: Any, now: float, out: list[Reading | ReadingBlock],
                   events: list[Event]) -> None:
        self._flush()
        reason = _malformed(raw)
        sensor = raw.sensor_id if isinstance(getattr(raw, "sensor_id", None), str) else "?"
        if reason is None:
            recent = self._recent.setdefault(sensor, deque(maxlen=_RECENT))
            us = round(raw.timestamp * 1_000_000)
            if us in recent:
                reason = "repeated_timestamp"
            else:
                recent.append(us)
                if us > self._newest.get(sensor, -1):
                    self._newest[sensor] = us
        if reason is not None:
            self._drop(reason, sensor, now, events)
            return
        r = raw.sanitised()
        if r.value is not None:
            self.latest[r.sensor_id] = r.value
        out.append(r)

    def _admit_block(self, b: ReadingBlock, now: float, out: list[Reading | ReadingBlock],
                     events: list[Event]) -> None:
        """One tight loop over the columns: a row with a finite float value, a float quality
        in [0, 1], a finite timestamp in range, a :class:`Sensor` and no metadata of its own
        is checked for repeats here; any other row goes through :meth:`_admit_one`."""
        n = len(b.sensors)
        if not (len(b.values) == len(b.timestamps) == len(b.quality) == n
                and type(b.metadata) is dict):
            self._drop("bad_block", "?", now, events)
            return
        if b.plain() and self._admit_plain(b):
            out.append(b)
            return
        self._flush()
        recent, newest, latest, own = self._recent, self._newest, self.latest, b.metadata
        last_ts: float | None = None
        us = 0
        keep: list[int] = []
        slow: list[int] = []
        for i, (s, v, ts, q) in enumerate(zip(b.sensors, b.values, b.timestamps, b.quality,
                                               strict=True)):
            if not (type(v) is float and v - v == 0.0 and type(ts) is float
                    and MIN_TS <= ts < MAX_TS and type(q) is float and 0.0 <= q <= 1.0
                    and type(s) is Sensor) or (own and i in own):
                slow.append(i)
                continue
            sid = s.sensor_id
            if ts != last_ts:
                last_ts, us = ts, round(ts * 1_000_000)
            dq = recent.get(sid)
            if dq is None:
                dq = recent[sid] = deque(maxlen=_RECENT)
            elif us <= newest.get(sid, us) and us in dq:  # a newer sample is no repeat
                self._drop("repeated_timestamp", sid, now, events)
                continue
            dq.append(us)
            if us > newest.get(sid, -1):
                newest[sid] = us
            latest[sid] = v
            keep.append(i)
        if len(keep) == n:
            out.append(b)
        elif keep:
            out.append(b.take(keep))
        for i in slow:
            try:
                row: Any = b.row(i)
            except (IndexError, TypeError, AttributeError):  # not a Sensor: no reading at all
                self._drop("bad_sensor_id", "?", now, events)
                continue
            self._admit_one(row, now, out, events)

    def _admit_plain(self, b: ReadingBlock) -> bool:
        """A :meth:`ReadingBlock.plain` block of distinct sensors, each newer than the newest
        sample admitted of it (no repeat possible): admitted column by column (``map`` in C).
        False, with nothing changed, when that does not hold (the row loop decides)."""
        lay = self._layouts.get(b.sensors, _Ids)
        if not lay.distinct:
            return False
        uss = micros(b.timestamps)
        if lay is self._pending:  # its sensors' newest samples: the last column admitted
            if not all(map(gt, uss, self._pending_us[-1])):
                return False
        else:
            self._flush()
            if not all(map(gt, uss, map(self._newest.get, lay.sids, repeat(-1)))):
                return False
            self._pending = lay
        self._pending_us.append(uss)
        self.latest.update(zip(lay.sids, cast(list[float], b.values), strict=True))
        return True

    def _flush(self) -> None:
        """Add the pending plain columns to each sensor's recent timestamps and newest one."""
        lay, self._pending = self._pending, None
        if lay is None:
            return
        dqs = lay.deques
        if dqs is None:  # the same deques every time: _recent never replaces one
            dqs = lay.deques = [self._recent.setdefault(sid, deque(maxlen=_RECENT))
                                for sid in lay.sids]
        for uss in self._pending_us:
            deque(map(deque.append, dqs, uss), maxlen=0)  # consumed in C
        self._newest.update(zip(lay.sids, self._pending_us[-1], strict=True))
        self._pending_us.clear()

    def _drop(self, reason: str, sensor: str, now: float, events: list[Event]) -> None:
        key = f"{reason}:{sensor}"
        self.dropped[key] += 1
        if self.dropped[key] == 1:
            events.append(Event("reading_dropped", sensor, now, "warning"
                                if reason != "repeated_timestamp" else "info",
                                {"reason": reason, "first": True}))

    def stats(self) -> dict[str, int]:
        return dict(self.dropped)


class _Ids:
    """A block's sensor ids, whether they are distinct, and (once made) their deques."""

    __slots__ = ("deques", "distinct", "sids")

    def __init__(self, sensors: list[Sensor]) -> None:
        self.sids: list[str] = list(map(_SENSOR_ID, sensors))
        self.distinct = len(set(self.sids)) == len(self.sids)
        self.deques: list[deque[int]] | None = None


def micros(ts: list[float]) -> list[int]:
    """``round(t * 1_000_000)`` of each timestamp; once per distinct one when they repeat (a
    driver stamps a whole block read with one time)."""
    distinct = set(ts)
    if len(distinct) * 4 > len(ts):
        return list(map(round, map(mul, ts, repeat(1_000_000))))
    us_of = {t: round(t * 1_000_000) for t in distinct}
    return list(map(us_of.__getitem__, ts))


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
