"""One waveform source's analysis chain: window → features → score → alert/drift events.

:class:`Analysis` is a plain object: give it :class:`~edge_agent.records.WaveformBlock`s, get
back feature vectors and events to buffer. The extractor is built on the first block (it needs
the source's sample rate and channels); the model is loaded then and checked against the
extractor's contract — a refused model leaves the previous one (or none) in place, the pipeline
keeps buffering features, and an event says why. In commissioning mode the vectors are collected
and, when enough are in, :meth:`Analysis.fit_baseline` (run in a worker thread by the pipeline)
fits and loads this asset's own model.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent.config import PipelineConfig
from edge_agent.models.alerting import AnomalyAlerter
from edge_agent.models.drift import DriftMonitor
from edge_agent.models.extract import Extractor, make_extractor
from edge_agent.models.onnx_score import ModelError, ModelSlot
from edge_agent.models.training import Commissioner, commissioning_event
from edge_agent.models.windowing import Windower
from edge_agent.records import Event, FeatureVector, WaveformBlock

log = logging.getLogger("edge_agent.analysis")


def resolve_model(spec: str) -> Path:
    """``builtin:<name>`` names a bundle shipped in the package; anything else is a path."""
    if spec.startswith("builtin:"):
        import edge_agent.models as m

        return Path(m.__file__).resolve().parent / "bundles" / spec.removeprefix("builtin:")
    return Path(spec).expanduser()


class Analysis:
    def __init__(self, cfg: PipelineConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.source = cfg.source
        self.state_dir = state_dir
        self.windower = Windower(cfg.window, cfg.hop)
        self.extractor: Extractor | None = None
        self.slot: ModelSlot | None = None
        self.alerter = AnomalyAlerter(cfg.source, cfg.alerts)
        self.drift: DriftMonitor | None = None
        self.commissioner: Commissioner | None = None
        self._layout: tuple[float, tuple[str, ...]] | None = None
        self.broken: str | None = None   # set when the source cannot be analysed as configured
        self.windows = 0
        self.invalid_windows = 0
        self.anomalous_windows = 0
        self.model_status = "none"
        self.last_score: float | None = None

    @property
    def threshold(self) -> float | None:
        if self.slot is None or self.slot.current is None:
            return None
        return self.cfg.threshold if self.cfg.threshold is not None else \
            self.slot.current.threshold

    # -- set-up -----------------------------------------------------------------------------
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
            out = out if out.is_absolute() else self.state_dir / out
            self.commissioner = Commissioner(cc.model_copy(update={"out_dir": str(out)}),
                                             self.source, ext.names(), ext.contract())
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
            self.model_status = f"refused: {exc}" if kept is None else self.model_status
            return Event("model_refused", self.source, ts, "warning",
                         {"path": str(path), "reason": str(exc),
                          "kept": None if kept is None else
                          {"name": kept.ref.name, "version": kept.ref.version}})
        self.alerter.reset()
        self.drift = (DriftMonitor(self.source, scorer.manifest, self.cfg.drift)
                      if self.cfg.drift.enabled else None)
        self.model_status = f"{scorer.ref.name} v{scorer.ref.version}"
        log.info("model loaded", extra={"source": self.source, "model": scorer.ref.name,
                                        "version": scorer.ref.version,
                                        "threshold": self.threshold})
        return Event("model_loaded", self.source, ts, "info",
                     {"model": {"name": scorer.ref.name, "version": scorer.ref.version},
                      "threshold": self.threshold, "path": str(path)})

    # -- the chain --------------------------------------------------------------------------
    def process(self, block: WaveformBlock, shaft_rpm: float | None = None
                ) -> tuple[list[FeatureVector], list[Event]]:
        windows = self.windower.push(block)
        if not windows:
            return [], []
        events = self._setup(windows[0].sample_rate, windows[0].channels, windows[0].end)
        ext = self.extractor
        if ext is None:
            return [], events
        names = ext.names()
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            X = ext.batch(windows, shaft_rpm)  # non-finite windows come back as NaN rows
        finite = np.isfinite(X).all(axis=1)
        self.windows += len(windows)
        self.invalid_windows += int((~finite).sum())
        vectors = [FeatureVector(self.source, w.start, w.end,
                                 {n: float(v) for n, v in zip(names, row, strict=True)
                                  if math.isfinite(v)})
                   for w, row in zip(windows, X, strict=True)]
        scorer = self.slot.current if self.slot else None
        if scorer is not None:
            events += self._score(X, vectors)
        elif self.commissioner is not None and not self.commissioner.done:
            for fv in vectors:
                self.commissioner.add(fv)
            self.model_status = f"commissioning: {self.commissioner.collected} windows"
        return vectors, events

    def _score(self, X: np.ndarray, vectors: list[FeatureVector]) -> list[Event]:
        assert self.slot is not None and self.slot.current is not None
        scorer = self.slot.current
        thr = self.threshold
        assert thr is not None
        try:
            scores = scorer.score(X)
        except (ModelError, ValueError) as exc:
            log.error("scoring failed", extra={"source": self.source, "reason": str(exc)})
            return [Event("scoring_failed", self.source, vectors[-1].window_end, "warning",
                          {"reason": str(exc)})]
        events: list[Event] = []
        for fv, row, s in zip(vectors, X, scores, strict=True):
            fv.model = scorer.ref
            if not math.isfinite(s):
                continue  # invalid window: features kept, no score, no vote either way
            fv.score = float(s)
            fv.is_anomaly = bool(s > thr)
            self.last_score = fv.score
            self.anomalous_windows += fv.is_anomaly
            ev = self.alerter.observe(fv.score, thr, scorer.ref, fv.window_end)
            if ev is not None:
                log.warning(ev.kind, extra={"source": self.source, "score": fv.score,
                                            "threshold": thr, "model": scorer.ref.name})
                events.append(ev)
            if self.drift is not None:
                dev = self.drift.update(row, fv.window_end)
                if dev is not None:
                    events.append(dev)
        return events

    # -- commissioning ----------------------------------------------------------------------
    @property
    def baseline_ready(self) -> bool:
        c = self.commissioner
        return c is not None and c.done and (self.slot is None or self.slot.current is None)

    def fit_baseline(self) -> Path | ModelError:
        """CPU-heavy (sklearn): the pipeline runs this in a worker thread."""
        assert self.commissioner is not None
        try:
            return self.commissioner.fit()
        except ImportError as exc:  # an install without scikit-learn/skl2onnx
            return ModelError(f"baseline learning needs scikit-learn and skl2onnx: {exc}")
        except (ModelError, ValueError, OSError) as exc:
            return ModelError(str(exc))

    def baseline_done(self, result: Path | ModelError, ts: float) -> list[Event]:
        c = self.commissioner
        assert c is not None
        self.commissioner = None
        if isinstance(result, ModelError):
            self.model_status = f"commissioning failed: {result}"
            return [commissioning_event(self.source, ts, path=None, name="", version="",
                                        threshold=None, rows=c.collected, error=str(result))]
        loaded = self.load_model(result, ts)
        cur = self.slot.current if self.slot else None
        done = commissioning_event(self.source, ts, path=result,
                                   name=cur.ref.name if cur else "",
                                   version=cur.ref.version if cur else "",
                                   threshold=self.threshold, rows=c.collected,
                                   error=None if cur else str(loaded.details.get("reason")))
        return [done, loaded]

    def stats(self) -> dict[str, Any]:
        drift = self.drift.value() if self.drift else None
        return {"windows": self.windows, "invalid_windows": self.invalid_windows,
                "anomalous_windows": self.anomalous_windows, "model": self.model_status,
                "threshold": self.threshold, "last_score": self.last_score,
                "alarm": self.alerter.state.active, "drift": drift,
                "broken": self.broken}
