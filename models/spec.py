"""Offline chain settings: what a feature matrix was (or must be) computed with.

A :class:`Spec` names the extractor settings (features, window, hop) and the recording's sample
rate and channels; it satisfies :class:`edge_agent.models.chain.ChainConfig` with no model and
no commissioning, so :func:`edge_agent.models.chain.features_of` runs recordings through the
daemon's own chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.models.alerting import AlertConfig
from edge_agent.models.commissioning import CommissioningConfig
from edge_agent.models.drift import DriftConfig
from edge_agent.models.dsp.extract import SoundConfig, VibrationConfig, make_extractor
from edge_agent.models.onnx_score import ScorerConfig


@dataclass(frozen=True)
class Spec:
    """A chain's extractor settings for offline use (training, evaluation): features, window,
    hop and the recording's sample rate and channels. Satisfies :class:`ChainConfig` (no
    model, no commissioning)."""

    name: str
    features: VibrationConfig | SoundConfig
    window: int
    hop: int
    sample_rate: float
    channels: tuple[str, ...]
    source: str = "offline"
    model: ScorerConfig | None = None
    threshold: float | None = None
    alerts: AlertConfig = AlertConfig()
    drift: DriftConfig = DriftConfig(enabled=False)
    commissioning: CommissioningConfig | None = None


def names_contract(spec: Spec) -> tuple[tuple[str, ...], dict[str, object]]:
    """The feature names and the extractor contract a model for ``spec`` must carry."""
    ext = make_extractor(spec.features, spec.sample_rate, spec.channels, spec.window, spec.hop)
    return ext.names(), ext.contract()
