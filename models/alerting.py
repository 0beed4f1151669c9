"""Alert hysteresis: raise after N consecutive windows over threshold, clear after M under.

A window without a score (non-finite features, model failure) neither raises nor clears: it
breaks neither run (``update`` is simply not called for it, or :meth:`AnomalyAlerter.observe` is
given ``None``).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from edge_agent.records import Event, ModelRef, Severity
from edge_agent.settings import Model

Transition = Literal["raised", "cleared"]


class AlertConfig(Model):
    """``[pipelines.<id>.alerts]``."""

    raise_after: int = Field(3, ge=1)
    clear_after: int = Field(5, ge=1)
    severity: Literal["info", "warning", "critical"] = "warning"


class Hysteresis:
    """Counts consecutive over/under windows; reports state transitions only."""

    def __init__(self, raise_after: int, clear_after: int) -> None:
        if raise_after < 1 or clear_after < 1:
            raise ValueError("raise_after and clear_after must be >= 1")
        self.raise_after = raise_after
        self.clear_after = clear_after
        self.active = False
        self._over = 0
        self._under = 0

    def update(self, is_over: bool) -> Transition | None:
        if is_over:
            self._over += 1
            self._under = 0
            if not self.active and self._over >= self.raise_after:
                self.active = True
                return "raised"
        else:
            self._under += 1
            self._over = 0
            if self.active and self._under >= self.clear_after:
                self.active = False
                return "cleared"
        return None

    def reset(self) -> None:
        self.active = False
        self._over = self._under = 0


def anomaly_event(transition: Transition, source_id: str, timestamp: float, *, score: float,
                  threshold: float, model: ModelRef, severity: Severity = "warning",
                  windows: int | None = None) -> Event:
    """``anomaly_raised`` (given severity) / ``anomaly_cleared`` (info) with the model details."""
    details: dict[str, object] = {
        "score": float(score), "threshold": float(threshold),
        "model": {"name": model.name, "version": model.version},
    }
    if windows is not None:
        details["windows"] = windows
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
        t = self.state.update(score > threshold)
        if t is None:
            return None
        n = self.cfg.raise_after if t == "raised" else self.cfg.clear_after
        return anomaly_event(t, self.source_id, timestamp, score=score, threshold=threshold,
                             model=model, severity=self.cfg.severity, windows=n)

    def reset(self) -> None:
        """Call when the model changes: a new model starts from 'no anomaly'."""
        self.state.reset()
