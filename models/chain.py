"""The analysis chain of one waveform source: window → features → score → alert → drift.

This is the one implementation of the chain. The daemon runs it per pipeline
(:class:`edge_agent.agent.analysis.Analysis` builds it from a ``[[pipelines]]`` entry); the
training command (``edge-agent models train --from-files``) and the default-models script take
their feature matrices from :func:`features_of`, which pushes the recording through the same
windowing and extraction.

:class:`Chain` is a plain object: give it :class:`~edge_agent.records.WaveformBlock`s, get back
feature vectors and events to buffer. The extractor is built on the first block (it needs the
source's sample rate and channels); the model is loaded then and checked against the
extractor's contract — a refused model leaves the previous one (or none) in place, the pipeline
keeps buffering features, and an event says why. :meth:`Chain.swap_model` replaces the scorer
of a running chain between two blocks (the model registry's hot swap). In commissioning mode the
vectors are collected and, when enough are in, :meth:`Chain.fit_baseline` (run in a worker
thread by the pipeline) fits this asset's own model; :meth:`Chain.baseline_done` loads it.
The set-up on the first block and the model's lifecycle (load, swap) are in
:mod:`edge_agent.models.chain_setup`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ModelError
from edge_agent.models.alerting import AlertConfig, AnomalyAlerter
from edge_agent.models.calibration import RollingMean
from edge_agent.models.chain_setup import ChainSetup, analysis_rate
from edge_agent.models.commissioning import (
    Commissioner,
    CommissioningConfig,
    commissioning_event,
    require_train_extra,
)
from edge_agent.models.conform import Conformer
from edge_agent.models.diagnosis import SampleRing, diagnose, label
from edge_agent.models.drift import DriftConfig, DriftMonitor
from edge_agent.models.dsp.extract import Extractor, SoundConfig, VibrationConfig
from edge_agent.models.dsp.windowing import Window, Windower
from edge_agent.models.onnx_score import ModelSlot, Scorer, ScorerConfig
from edge_agent.models.spec import Spec, names_contract
from edge_agent.models.speed import SpeedWatch
from edge_agent.records import Event, FeatureVector, WaveformBlock

__all__ = ["BaselineFailed", "BaselineLearned", "Chain", "ChainConfig", "Spec", "feature_matrix",
           "features_of", "names_contract"]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


class ChainConfig(Protocol):
    """What a chain is configured with (a ``[[pipelines]]`` entry, or a :class:`Spec`)."""

    @property
    def source(self) -> str: ...
    @property
    def features(self) -> VibrationConfig | SoundConfig: ...
    @property
    def window(self) -> int: ...
    @property
    def hop(self) -> int: ...
    @property
    def model(self) -> ScorerConfig | None: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def alerts(self) -> AlertConfig: ...
    @property
    def drift(self) -> DriftConfig: ...
    @property
    def commissioning(self) -> CommissioningConfig | None: ...


@dataclass(frozen=True)
class BaselineLearned:
    """Commissioning fitted and exported this bundle."""

    path: Path


@dataclass(frozen=True)
class BaselineFailed:
    """Commissioning could not fit a baseline (the reason says why)."""

    reason: str


BaselineResult = BaselineLearned | BaselineFailed


def feature_matrix(extractor: Extractor, windows: list[Window],
                   shaft_rpm: float | None = None) -> F64:
    """The ``(n_windows, n_features)`` matrix; windows with non-finite input come back as NaN
    rows (never an exception)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return extractor.batch(windows, shaft_rpm)


class Chain(ChainSetup):
    def __init__(self, cfg: ChainConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.source = cfg.source
        self.state_dir = state_dir
        cc = cfg.commissioning
        if cc is not None and cc.enabled:
            require_train_extra()  # refused at start, not when the baseline is due
        self.windower = Windower(cfg.window, cfg.hop,
                                 jitter=float(getattr(cfg, "window_jitter", 0.25)))
        self.conformer = Conformer(analysis_rate(cfg), getattr(cfg.features, "accel_unit", None))
        self.input_problem: str | None = None   # why the source's blocks are refused now
        self.extractor: Extractor | None = None
        self.slot: ModelSlot | None = None
        self.alerter = AnomalyAlerter(cfg.source, cfg.alerts)
        self.drift: DriftMonitor | None = None
        self.commissioner: Commissioner | None = None
        # Raw samples of the last seconds, for a fault diagnosis on alarm (vibration pipelines
        # with a bearing geometry only; the shaft speed comes per block or from the config).
        feats = cfg.features
        self.ring = (SampleRing() if isinstance(feats, VibrationConfig)
                     and feats.bearing is not None else None)
        self._rpm: float | None = None
        self._decide: RollingMean | None = None  # mean score over the bundle's decision span
        self._layout: tuple[float, tuple[str, ...]] | None = None
        self.broken: str | None = None   # set when the source cannot be analysed as configured
        self.windows = 0
        self.invalid_windows = 0
        self.anomalous_windows = 0
        self.model_status = "none"
        self.last_score: float | None = None
        self.speed = SpeedWatch(cfg.source)
        # Sees every scoring result (scores of rows with finite features) or scoring error;
        # the model registry watches a newly deployed version through it.
        self.score_watch: Callable[[F64 | Exception], None] | None = None

    @property
    def cannot_score(self) -> str | None:
        """Why windows are not scored right now (None: they are, or no model is configured)."""
        if self.input_problem is not None:
            return self.input_problem
        if self.broken is not None:
            return self.broken
        if self.slot is None or self.slot.current is None:
            st = self.model_status
            return st.removeprefix("refused: ") if st.startswith("refused: ") else None
        return self.speed.missing

    # -- the chain --------------------------------------------------------------------------
    def extract(self, block: WaveformBlock, shaft_rpm: float | None = None
                ) -> tuple[list[Window], F64, list[Event]]:
        """Window → features: the complete windows ``block`` finishes, their feature matrix
        and any set-up events (empty matrix while no window is complete or the source cannot
        be analysed)."""
        conformed, problem = self.conformer.push(block)
        events = self._input_events(problem, block.end)
        if conformed is None:
            return [], np.empty((0, 0)), events
        windows = self.windower.push(conformed)
        if not windows:
            return [], np.empty((0, 0)), events
        events += self._setup(windows[0].sample_rate, windows[0].channels, windows[0].end)
        if self.extractor is None:
            return [], np.empty((0, 0)), events
        return windows, feature_matrix(self.extractor, windows, shaft_rpm), events

    def _input_events(self, problem: str | None, ts: float) -> list[Event]:
        """One event when the source's blocks start being refused (rate, unit), one when they
        are accepted again."""
        if problem == self.input_problem:
            return []
        was, self.input_problem = self.input_problem, problem
        if problem is None:
            return [Event("input_accepted", self.source, ts, "info", {"was": was})]
        log.error("pipeline cannot analyse the source's samples",
                  extra={"source": self.source, "reason": problem})
        return [Event("cannot_score", self.source, ts, "warning", {"reason": problem})]

    def process(self, block: WaveformBlock, shaft_rpm: float | None = None
                ) -> tuple[list[FeatureVector], list[Event]]:
        rpm = shaft_rpm if shaft_rpm is not None else \
            getattr(self.cfg.features, "shaft_speed_rpm", None)
        if self.ring is not None:
            self.ring.push(block.samples, block.sample_rate)
            self._rpm = rpm
        windows, X, events = self.extract(block, shaft_rpm)
        if not windows or self.extractor is None:
            return [], events
        names = self.extractor.names()
        why, absent = self.extractor.absent(shaft_rpm)
        finite = np.isfinite(np.delete(X, absent, axis=1) if absent else X).all(axis=1)
        self.windows += len(windows)
        self.invalid_windows += int((~finite).sum())
        vectors = [FeatureVector(self.source, w.start, w.end,
                                 {n: float(v) for n, v in zip(names, row, strict=True)
                                  if math.isfinite(v)})
                   for w, row in zip(windows, X, strict=True)]
        scorer = self.slot.current if self.slot else None
        events += self.speed.missing_events(why, [names[i] for i in absent], scorer is not None,
                                            vectors[-1].window_end)
        if why is not None:
            return vectors, events  # features the model (or baseline) needs are absent: not scored
        if scorer is not None:
            events += self.speed.range_events(scorer, rpm, vectors[-1].window_end)
            events += self._score(scorer, X, vectors)
        elif self.commissioner is not None and not self.commissioner.done:
            for fv in vectors:
                self.commissioner.add(fv)
            self.model_status = f"commissioning: {self.commissioner.collected} windows"
        return vectors, events

    def _score(self, scorer: Scorer, X: F64, vectors: list[FeatureVector]) -> list[Event]:
        thr = self.threshold
        assert thr is not None
        try:
            scores = scorer.score(X)
        except ModelError as exc:
            if self.score_watch is not None:
                self.score_watch(exc)
            log.error("scoring failed", extra={"source": self.source, "reason": str(exc)})
            return [Event("scoring_failed", self.source, vectors[-1].window_end, "warning",
                          {"reason": str(exc)})]
        if self.score_watch is not None:
            self.score_watch(scores[np.isfinite(X).all(axis=1)])
        events: list[Event] = []
        for fv, row, s in zip(vectors, X, scores, strict=True):
            fv.model = scorer.ref
            if not math.isfinite(s):
                continue  # invalid window: features kept, no score, no vote either way
            fv.score = float(s)
            decision = self._decide.add(fv.window_end, fv.score) if self._decide else fv.score
            fv.is_anomaly = bool(decision > thr)
            self.last_score = fv.score
            self.anomalous_windows += fv.is_anomaly
            ev = self.alerter.observe(decision, thr, scorer.ref, fv.window_end)
            if ev is not None:
                if ev.kind == "anomaly_raised":
                    self._attach_diagnosis(ev)
                log.warning("anomaly alert", extra={"kind": ev.kind, "source": self.source,
                                                    "score": fv.score, "threshold": thr,
                                                    "model": scorer.ref.name})
                events.append(ev)
            if self.drift is not None:
                dev = self.drift.update(row, fv.window_end)
                if dev is not None:
                    events.append(dev)
        return events

    def diagnosis(self) -> dict[str, Any] | None:
        """Fault diagnosis over the ring of recent samples (on alarm, or on demand); None when
        this chain keeps no ring (not vibration, no bearing geometry) or has no shaft speed."""
        feats = self.cfg.features
        bearing = getattr(feats, "bearing", None)
        if self.ring is None or bearing is None or self.ring.rate is None:
            return None
        if self._rpm is None or not math.isfinite(self._rpm) or self._rpm <= 0:
            return None
        return diagnose(self.ring.samples(), self.ring.rate, self._rpm / 60.0, bearing)

    def _attach_diagnosis(self, ev: Event) -> None:
        result = self.diagnosis()
        if result is not None:
            ev.details["diagnosis"] = {**result, "label": label(result)}
            log.info("fault diagnosis", extra={"source": self.source,
                                               "fault": result["fault"],
                                               "confidence": result["confidence"]})

    # -- commissioning ----------------------------------------------------------------------
    @property
    def baseline_ready(self) -> bool:
        c = self.commissioner
        return c is not None and c.done and (self.slot is None or self.slot.current is None)

    def fit_baseline(self) -> BaselineResult:
        """CPU-heavy (sklearn): the pipeline runs this in a worker thread."""
        assert self.commissioner is not None
        try:
            return BaselineLearned(self.commissioner.fit())
        except (ModelError, OSError) as exc:
            return BaselineFailed(str(exc))

    def baseline_done(self, result: BaselineResult, ts: float) -> list[Event]:
        c = self.commissioner
        assert c is not None
        self.commissioner = None
        if isinstance(result, BaselineFailed):
            self.model_status = f"commissioning failed: {result.reason}"
            return [commissioning_event(self.source, ts, path=None, name="", version="",
                                        threshold=None, rows=c.collected, error=result.reason)]
        loaded = self.load_model(result.path, ts)
        cur = self.slot.current if self.slot else None
        done = commissioning_event(self.source, ts, path=result.path,
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
                "broken": self.broken, "cannot_score": self.cannot_score,
                "speed_out_of_range": self.speed.out_of_range, "windowing": self._windowing()}

    def _windowing(self) -> dict[str, Any]:
        """Stream continuity of this source: restarts by reason, samples lost, jitter."""
        per = self.windower.stats().get(self.source, {})
        resets = per.get("resets") or {}
        return {"resets": sum(resets.values()) if isinstance(resets, dict) else 0,
                "resets_by_reason": resets, "dropped_samples": per.get("dropped_samples", 0),
                "jitter_ms": per.get("jitter_ms", 0.0)}


# -- offline: recordings → feature matrices through the same chain ---------------------------

def features_of(spec: Spec, samples: npt.ArrayLike, source: str = "replay",
                start: float = 0.0, shaft_rpm: float | None = None,
                sample_rate: float | None = None) -> F64:
    """Cut ``samples`` (n, channels) into the spec's windows and extract the feature matrix,
    through the same :meth:`Chain.extract` the daemon runs; samples at a faster
    ``sample_rate`` are resampled to the spec's rate first, as in the daemon."""
    chain = Chain(spec, Path("."))
    block = WaveformBlock(source, sample_rate or spec.sample_rate, spec.channels, start,
                          np.ascontiguousarray(samples, dtype=np.float64),
                          str(getattr(spec.features, "accel_unit", "")))
    windows, X, _ = chain.extract(block, shaft_rpm)
    if chain.broken is not None or chain.input_problem is not None:
        raise ModelError(f"spec {spec.name}: {chain.broken or chain.input_problem}")
    return X if windows else np.empty((0, len(names_contract(spec)[0])))
