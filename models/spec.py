"""Offline chain settings: what a feature matrix was (or must be) computed with.

A :class:`Spec` names the extractor settings (features, window, hop) and the recording's sample
rate and channels; it satisfies :class:`edge_agent.models.chain.ChainConfig` with no model and
no commissioning, so :func:`edge_agent.models.chain.features_of` runs recordings through the
daemon's own chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


_VIB_KEYS = ("include", "high_freq_cut", "spectrum_dtype", "accel_unit", "envelope_harmonics",
             "envelope_tolerance", "shaft_speed_rpm", "shaft_speed_tag")
_SOUND_KEYS = {"include": "include", "bands_per_octave": "bands_per_octave",
               "band_fmin": "band_fmin", "n_mfcc": "n_mfcc", "n_mels": "n_mels", "n_fft": "n_fft",
               "mfcc_hop": "hop", "fmin": "fmin", "fmax": "fmax", "top_db": "top_db"}


def spec_from_contract(contract: Mapping[str, Any], name: str = "like",
                       shaft_speed_rpm: float | None = None) -> Spec:
    """The :class:`Spec` a bundle's extractor contract describes (``--like BUNDLE``): every
    extractor setting is in the contract. ``shaft_speed_rpm`` supplies the speed of a recording
    (the speed's source is not part of the contract). Raises ``ValueError`` when the contract
    cannot be rebuilt exactly."""
    from edge_agent.settings import parse

    c = dict(contract)
    feats: dict[str, Any]
    if c.get("kind") == "sound":
        feats = {"kind": "sound", **{mine: c[k] for k, mine in _SOUND_KEYS.items() if k in c}}
        if "include" in feats:
            feats["include"] = tuple(feats["include"])
        cfg: VibrationConfig | SoundConfig = parse(SoundConfig, feats, "contract")
    else:
        feats = {k: c[k] for k in _VIB_KEYS if c.get(k) is not None}
        feats["include"] = tuple(feats.get("include", ("basic",)))
        if "iso_band" in c:
            feats["iso_band_lo"], feats["iso_band_hi"] = c["iso_band"]
        if c.get("iso_zone_limits"):
            feats["iso_zones"] = tuple(c["iso_zone_limits"])
        if "envelope_band" in c:
            feats["envelope_band_lo"], feats["envelope_band_hi"] = c["envelope_band"]
        if c.get("bearing"):
            n, bd, pd, ang = c["bearing"]
            feats["bearing"] = {"n_balls": int(n), "ball_diameter": bd, "pitch_diameter": pd,
                                "contact_angle_deg": ang}
        if shaft_speed_rpm is not None:
            feats["shaft_speed_rpm"] = float(shaft_speed_rpm)
        elif "envelope" in feats["include"]:
            feats.pop("shaft_speed_rpm", None)
            feats["shaft_speed_tag"] = "recording"  # each recording's own speed (shaft_rpm=)
        cfg = parse(VibrationConfig, feats, "contract")
    spec = Spec(name, cfg, int(c["window"]), int(c["hop"]), float(c["sample_rate"]),
                tuple(c["channels"]))
    names, _ = names_contract(spec)
    if list(names) != list(c.get("features", names)):
        raise ValueError("the contract's feature list cannot be rebuilt from its settings")
    return spec
