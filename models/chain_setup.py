"""A chain's set-up and model (a mixin of :class:`.chain.Chain`).

What a chain builds on the first block of a source layout (sample rate and channels): the
extractor, the model slot checking bundles against the extractor's contract, the commissioner;
and the model's lifecycle: load and check a bundle (a refused one leaves the previous model, or
none, in place), swap in an already checked scorer, and restart what depends on the model (alert
hysteresis, the decision span, drift).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import ModelError
from edge_agent.models.alerting import AnomalyAlerter
from edge_agent.models.builtin import resolve_model
from edge_agent.models.calibration import RollingMean
from edge_agent.models.commissioning import Commissioner
from edge_agent.models.drift import DriftMonitor
from edge_agent.models.dsp.extract import Extractor, make_extractor
from edge_agent.models.onnx_score import ModelSlot, Scorer
from edge_agent.records import Event

if TYPE_CHECKING:
    from edge_agent.models.chain import ChainConfig

__all__ = ["ChainSetup", "analysis_rate"]

log = logging.getLogger(__name__)


class ChainSetup:
    """The extractor, model slot and commissioner of a chain, and its model's lifecycle."""

    cfg: ChainConfig
    source: str
    state_dir: Path
    extractor: Extractor | None
    slot: ModelSlot | None
    commissioner: Commissioner | None
    alerter: AnomalyAlerter
    drift: DriftMonitor | None
    broken: str | None
    model_status: str
    _decide: RollingMean | None
    _layout: tuple[float, tuple[str, ...]] | None

    @property
    def threshold(self) -> float | None:
        if self.slot is None or self.slot.current is None:
            return None
        return self.cfg.threshold if self.cfg.threshold is not None else \
            self.slot.current.threshold

    def _setup(self, rate: float, channels: tuple[str, ...], ts: float) -> list[Event]:
        if self._layout == (rate, channels):
            return []
        self._layout = (rate, channels)
        try:
            ext = make_extractor(self.cfg.features, rate, channels, self.cfg.window, self.cfg.hop)
        except ValueError as exc:
            self.broken = str(exc)
            self.extractor = None
            log.error("pipeline cannot analyse source", extra={"source": self.source,
                                                                "reason": str(exc)})
            return [Event("pipeline_misconfigured", self.source, ts, "warning",
                          {"reason": str(exc)})]
        self.broken = None
        self.extractor = ext
        mc = self.cfg.model
        public_key = bytes.fromhex(mc.public_key_hex) if mc and mc.public_key_hex else None
        self.slot = ModelSlot(ext.names(), ext.contract(), threads=mc.threads if mc else 1,
                              public_key=public_key)
        cc = self.cfg.commissioning
        if cc is not None and cc.enabled:
            out = Path(cc.out_dir).expanduser()
            self.commissioner = Commissioner(cc, self.source, ext.names(), ext.contract(),
                                             out_dir=out if out.is_absolute()
                                             else self.state_dir / out)
            self.model_status = "commissioning"
        if mc is not None:
            return [self.load_model(resolve_model(mc.path), ts)]
        return []

    def load_model(self, path: Path, ts: float) -> Event:
        """Load and check a bundle; on refusal the previous model (or none) stays."""
        if self.slot is None:
            raise RuntimeError("load_model before the first block")
        kept = self.slot.current
        try:
            scorer = self.slot.load(path)
        except ModelError as exc:
            reason = str(exc)
            if "'sample_rate'" in reason and analysis_rate(self.cfg) is None:
                reason += " (set sample_rate in [[pipelines]] to resample a faster source)"
            self.model_status = f"refused: {reason}" if kept is None else self.model_status
            return Event("model_refused", self.source, ts, "warning",
                         {"path": str(path), "reason": reason,
                          "kept": None if kept is None else
                          {"name": kept.ref.name, "version": kept.ref.version}})
        return self._activated(scorer, ts, {"path": str(path)})

    def swap_model(self, scorer: Scorer, ts: float,
                   origin: Mapping[str, Any] | None = None) -> Event:
        """Make an already loaded and checked ``scorer`` the current model. Call it between two
        :meth:`process` calls (the chain is not re-entrant): the next window is scored by the
        new model, alert hysteresis and drift restart. The caller checks the scorer against
        :attr:`slot`'s contract (``Scorer.load(..., expected_names=slot.expected_names,
        expected_contract=slot.expected_contract)``)."""
        if self.slot is None:
            raise RuntimeError("swap_model before the first block")
        self.slot.current = scorer
        self.slot.last_error = None
        return self._activated(scorer, ts, dict(origin) if origin is not None
                               else {"path": str(scorer.bundle.path)})

    def _activated(self, scorer: Scorer, ts: float, details: dict[str, Any]) -> Event:
        self.alerter.reset()
        cal = scorer.manifest.score.get("calibration")
        span = float(cal.get("decision_seconds", 0.0)) if isinstance(cal, Mapping) else 0.0
        self._decide = RollingMean(span) if span > 0 else None
        self.drift = (DriftMonitor(self.source, scorer.manifest, self.cfg.drift)
                      if self.cfg.drift.enabled else None)
        self.model_status = f"{scorer.ref.name} v{scorer.ref.version}"
        log.info("model loaded", extra={"source": self.source, "model": scorer.ref.name,
                                        "version": scorer.ref.version,
                                        "threshold": self.threshold})
        return Event("model_loaded", self.source, ts, "info",
                     {"model": {"name": scorer.ref.name, "version": scorer.ref.version},
                      "threshold": self.threshold, **details})


def analysis_rate(cfg: ChainConfig) -> float | None:
    """The pipeline's analysis rate (``sample_rate`` in ``[[pipelines]]``; a :class:`Spec`'s
    rate), or None: the source's own."""
    rate = getattr(cfg, "sample_rate", None)
    return float(rate) if rate is not None else None
