"""What the status page shows about each analysed source over time, kept in memory.

:class:`StatusRecorder` is fed on the event loop where scores are produced (the pipeline's
analysis stage hands it each batch of feature vectors and events): one bounded ring of score
points per source (the maximum score per ``resolution`` seconds over ``history`` seconds), the
alarm periods, the recent alerts with their details (fault diagnosis included when the alert
carries one) and the latest feature vector. Nothing here touches SQLite or another thread.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from edge_agent.records import Event, FeatureVector

ALERT_KINDS = ("anomaly_raised", "anomaly_cleared")
MAX_ALERTS = 20
MAX_ALARMS = 50


class SourceTrack:
    """Score points, alarm periods, recent alerts and the latest features of one source."""

    def __init__(self, source: str, history: float, resolution: float) -> None:
        self.source = source
        self.history = history
        self.resolution = resolution
        self.points: deque[list[float]] = deque(maxlen=math.ceil(history / resolution) + 1)
        self.alarms: deque[list[float | None]] = deque(maxlen=MAX_ALARMS)  # [start, end|None]
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ALERTS)
        self.latest: FeatureVector | None = None
        self.scored = 0

    def add_vectors(self, vectors: Sequence[FeatureVector]) -> None:
        for fv in vectors:
            self.latest = fv
            s = fv.score
            if s is None or not math.isfinite(s):
                continue
            self.scored += 1
            t = math.floor(fv.window_end / self.resolution) * self.resolution
            last = self.points[-1] if self.points else None
            if last is not None and last[0] == t:
                last[1] = max(last[1], s)
            elif last is None or t > last[0]:
                self.points.append([t, s])

    def add_events(self, events: Iterable[Event]) -> None:
        for ev in events:
            if ev.kind == "anomaly_raised":
                self._close(ev.timestamp)
                self.alarms.append([ev.timestamp, None])
            elif ev.kind in ("anomaly_cleared", "model_loaded"):
                self._close(ev.timestamp)  # a new model starts from "no anomaly"
            if ev.kind in ALERT_KINDS or ev.kind.startswith("drift"):
                self.alerts.append({"kind": ev.kind, "timestamp": ev.timestamp,
                                    "severity": ev.severity, "details": _plain(ev.details)})

    def _close(self, ts: float) -> None:
        if self.alarms and self.alarms[-1][1] is None:
            self.alarms[-1][1] = ts

    def points_since(self, since: float, now: float) -> list[list[float]]:
        start = max(since, now - self.history)
        return [[t, s] for t, s in self.points if t >= start]

    def alarms_since(self, since: float) -> list[dict[str, float | None]]:
        return [{"start": a, "end": b} for a, b in self.alarms if b is None or b >= since]


def _plain(obj: Any) -> Any:
    """Event details as JSON-safe values (non-finite numbers become null)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


class StatusRecorder:
    """One :class:`SourceTrack` per analysed source, created on first sight."""

    def __init__(self, history: float = 3600.0, resolution: float = 5.0) -> None:
        self.history = history
        self.resolution = resolution
        self.tracks: dict[str, SourceTrack] = {}

    def track(self, source: str) -> SourceTrack:
        t = self.tracks.get(source)
        if t is None:
            t = self.tracks[source] = SourceTrack(source, self.history, self.resolution)
        return t

    def observe(self, source: str, vectors: Sequence[FeatureVector],
                events: Sequence[Event]) -> None:
        """Called by the analysis stage after each block of one source (on the event loop)."""
        tr = self.track(source)
        tr.add_vectors(vectors)
        tr.add_events(events)
