"""A chain's view of the shaft speed: one event when it goes missing (the envelope features are
absent and a model cannot score) and one when it is back; one when scoring runs outside the
model's training speed range (``shaft_speed_range`` in its contract) and one when back in."""

from __future__ import annotations

import logging

from edge_agent.models.onnx_score import Scorer, speed_in_range, speed_range
from edge_agent.records import Event

log = logging.getLogger(__name__)


class SpeedWatch:
    def __init__(self, source: str) -> None:
        self.source = source
        self.missing: str | None = None     # why the envelope features are absent now
        self.out_of_range = False           # speed outside the model's training range

    def missing_events(self, why: str | None, absent: list[str], scoring: bool,
                       ts: float) -> list[Event]:
        if why == self.missing:
            return []
        was, self.missing = self.missing, why
        if why is None:
            log.info("shaft speed back", extra={"source": self.source})
            return [Event("shaft_speed_restored", self.source, ts, "info", {"was": was})]
        log.warning("shaft speed missing", extra={"source": self.source, "reason": why})
        return [Event("shaft_speed_missing", self.source, ts, "warning",
                      {"reason": why, "absent_features": absent,
                       "cannot_score": f"the model needs {len(absent)} absent features"
                       if scoring else None})]

    def range_events(self, scorer: Scorer, rpm: float | None, ts: float) -> list[Event]:
        rng = speed_range(scorer.manifest.extractor)
        out = rng is not None and rpm is not None and not speed_in_range(rpm, rng)
        if out == self.out_of_range:
            return []
        self.out_of_range = out
        if not out:
            return [Event("shaft_speed_in_range", self.source, ts, "info", {"rpm": rpm})]
        log.warning("scoring outside the training speed range",
                    extra={"source": self.source, "rpm": rpm, "range": rng})
        return [Event("shaft_speed_out_of_range", self.source, ts, "warning",
                      {"rpm": rpm, "trained_rpm": list(rng or ()), "model": scorer.ref.name})]
