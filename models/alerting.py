"""Alert hysteresis in time, with a deadband.

An alarm is raised when the score has stayed **over** the threshold for ``raise_after`` seconds
(stream time: window ends) and cleared when it has stayed **under the clear threshold** for
``clear_after`` seconds. The clear threshold sits below the raise threshold (``clear_ratio``,
or an explicit ``clear_threshold``): a score that wanders around the threshold while a fault
grows keeps the alarm up instead of flapping. A score inside the deadband (between the two
thresholds) is "not clear": it keeps a run over the threshold going (a raise comes once the
score went over and has not fallen under the clear threshold for ``raise_after``) and it breaks
a run under the clear threshold (a clear needs ``clear_after`` seconds under it throughout).

``raise_after``/``clear_after`` are durations (``"2s"``, ``"1m"``, or a number of seconds); they
used to count windows, which made the hysteresis depend on the hop (at 25 windows/s a clear after
10 windows was 0.4 s). A run starts at the first window over (under) and lasts until the current
one, so ``raise_after = 0`` raises on the first window over.

A window without a score (non-finite features, model failure) neither raises nor clears: it
breaks neither run (:meth:`AnomalyAlerter.observe` is given ``None``).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from edge_agent.records import Event, ModelRef, Severity
from edge_agent.settings import Duration, Model

Transition = Literal["raised", "cleared"]


class AlertConfig(Model):
    """``[pipelines.<id>.alerts]``."""

    raise_after: Duration = 2.0
    """Seconds the score must stay over the threshold before ``anomaly_raised``."""
    clear_after: Duration = 60.0
    """Seconds the score must stay under the clear threshold before ``anomaly_cleared``."""
    clear_ratio: float = Field(0.9, gt=0, le=1)
    """Clear threshold = ``threshold - (1 - clear_ratio) * |threshold|`` (deadband)."""
    clear_threshold: float | None = None
    """An absolute clear threshold instead of ``clear_ratio`` (must be below the threshold)."""
    severity: Literal["info", "warning", "critical"] = "warning"

    def clear_level(self, threshold: float) -> float:
        """The clear threshold for a raise ``threshold`` (never above it)."""
        if self.clear_threshold is not None:
            return min(self.clear_threshold, threshold)
        return threshold - (1.0 - self.clear_ratio) * abs(threshold)


class Hysteresis:
    """Times consecutive over/under runs; reports state transitions only."""

    def __init__(self, raise_after: float, clear_after: float) -> None:
        if not (raise_after >= 0 and clear_after >= 0):
            raise ValueError("raise_after and clear_after must be >= 0 seconds")
        self.raise_after = raise_after
        self.clear_after = clear_after
        self.active = False
        self._over_since: float | None = None
        self._under_since: float | None = None

    def update(self, is_over: bool, timestamp: float, *, is_under: bool | None = None
               ) -> Transition | None:
        """One scored window ending at ``timestamp``: over the raise threshold, under the clear
        threshold (default: not over; a window in the deadband is neither)."""
        under = (not is_over) if is_under is None else is_under
        if is_over:
            self._under_since = None
            if self._over_since is None:
                self._over_since = timestamp
            if not self.active and timestamp - self._over_since >= self.raise_after:
                self.active = True
                return "raised"
        elif under:
            self._over_since = None
            if self._under_since is None:
                self._under_since = timestamp
            if self.active and timestamp - self._under_since >= self.clear_after:
                self.active = False
                return "cleared"
        else:  # deadband: not clear
            self._under_since = None
            if (self._over_since is not None and not self.active
                    and timestamp - self._over_since >= self.raise_after):
                self.active = True
                return "raised"
        return None

    def reset(self) -> None:
        self.active = False
        self._over_since = self._under_since = None


def anomaly_event(transition: Transition, source_id: str, timestamp: float, *, score: float,
                  threshold: float, model: ModelRef, severity: Severity = "warning",
                  seconds: float | None = None, clear_threshold: float | None = None) -> Event:
    """``anomaly_raised`` (given severity) / ``anomaly_cleared`` (info) with the model details."""
    details: dict[str, object] = {
        "score": float(score), "threshold": float(threshold),
        "model": {"name": model.name, "version": model.version},
    }
    if clear_threshold is not None:
        details["clear_threshold"] = float(clear_threshold)
    if seconds is not None:
        details["seconds"] = seconds
    return Event(f"anomaly_{transition}", source_id, timestamp,
                 severity if transition == "raised" else "info", details)


class AnomalyAlerter:
    """Hysteresis + event building for one source and model."""

    def __init__(self, source_id: str, cfg: AlertConfig) -> None:
        self.source_id = source_id
        self.cfg = cfg
        self.state = Hysteresis(cfg.raise_after, cfg.clear_after)

    def observe(self, score: float | None, threshold: float, model: ModelRef,
                timestamp: float) -> Event | None:
        if score is None or not math.isfinite(score):
            return None
        clear = self.cfg.clear_level(threshold)
        t = self.state.update(score > threshold, timestamp, is_under=score <= clear)
        if t is None:
            return None
        n = self.cfg.raise_after if t == "raised" else self.cfg.clear_after
        return anomaly_event(t, self.source_id, timestamp, score=score, threshold=threshold,
                             model=model, severity=self.cfg.severity, seconds=n,
                             clear_threshold=clear)

    def reset(self) -> None:
        """Call when the model changes: a new model starts from 'no anomaly'."""
        self.state.reset()
