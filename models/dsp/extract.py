"""The Extractor interface the agent pipeline uses: window -> ordered, named float features.

``make_extractor(cfg, sample_rate, channels, window, hop)`` builds one for a source. Feature
names are ``f"{channel}_{feature}"``; per channel, in order:

* vibration: the 11 basic features (:data:`features.BASIC_NAMES`) when ``"basic"`` is in
  ``include``; then ``iso_velocity_rms`` (mm/s, 10-1000 Hz) and, when a class or limits are
  set, ``iso_zone`` (0..3 = A..D) for ``"iso"``; then ``env_bpfo, env_bpfi, env_bsf, env_ftf``
  for ``"envelope"``.
* sound: ``mfcc_mean_0..N-1`` then ``mfcc_std_0..N-1`` for ``"mfcc"`` in ``include``; then the
  octave or third-octave band levels ``band_<centre>hz`` (dB re 1 unit², :mod:`.bands`) for
  ``"bands"``.

``extractor(window)`` returns a dict; ``extractor.batch(windows)`` returns an
``(n_windows, n_features)`` array in :meth:`names` order (fast path; rows of windows holding
NaN/Inf are NaN). ``__call__`` raises :class:`FeatureError` for such windows, and when the
envelope needs a shaft speed that is neither configured nor passed (``shaft_rpm=``, e.g. the
latest value of ``shaft_speed_tag``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from edge_agent.bearing import BearingGeometry
from edge_agent.errors import FeatureError
from edge_agent.models.dsp import features as ft
from edge_agent.models.dsp.envelope import ENVELOPE_NAMES, envelope_energies
from edge_agent.models.dsp.extractbase import F64, Extractor, _Base
from edge_agent.models.dsp.sound import SoundConfig, SoundExtractor
from edge_agent.models.dsp.windowing import Window
from edge_agent.settings import Model

__all__ = ["Extractor", "FeatureError", "SoundConfig", "VibrationConfig", "make_extractor"]

FeatureGroup = Literal["basic", "iso", "envelope"]


class VibrationConfig(Model):
    kind: Literal["vibration"] = "vibration"
    include: tuple[FeatureGroup, ...] = Field(("basic",), min_length=1)
    high_freq_cut: float = Field(1000.0, gt=0)
    accel_unit: Literal["g", "m/s2"] = "g"            # unit of the samples (for ISO velocity)
    iso_band_lo: float = Field(10.0, gt=0)
    iso_band_hi: float = Field(1000.0, gt=0)
    iso_class: Literal["I", "II", "III", "IV"] | None = None   # ISO 10816-1 machine class
    iso_zones: tuple[float, ...] | None = None        # custom A/B, B/C, C/D limits (10816-3)
    envelope_band_lo: float = Field(2000.0, ge=0)
    envelope_band_hi: float = Field(6000.0, gt=0)
    envelope_harmonics: int = Field(3, ge=1, le=10)
    envelope_tolerance: float = Field(0.02, gt=0, lt=0.5)   # relative, per harmonic
    bearing: BearingGeometry | None = None
    shaft_speed_rpm: float | None = Field(None, gt=0)
    shaft_speed_tag: str | None = None               # sensor_id of a reading giving rpm
    # float32: ~1.2x faster basic features, <= 1.5e-6 relative on real data (features.py doc)
    spectrum_dtype: Literal["float64", "float32"] = "float64"

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if len(set(self.include)) != len(self.include):
            out.append(("include", "lists a group twice"))
        if self.iso_band_lo >= self.iso_band_hi:
            out.append(("iso_band_hi", "must be above iso_band_lo"))
        if self.iso_zones is not None:
            z = self.iso_zones
            if len(z) != 3 or not all(0 < a < b for a, b in itertools.pairwise(z)) \
                    or z[0] <= 0:
                out.append(("iso_zones", "must be 3 increasing positive limits (A/B, B/C, C/D)"))
            if self.iso_class is not None:
                out.append(("iso_zones", "give either iso_class or iso_zones, not both"))
        if self.envelope_band_lo >= self.envelope_band_hi:
            out.append(("envelope_band_hi", "must be above envelope_band_lo"))
        if "envelope" in self.include:
            if self.bearing is None:
                out.append(("bearing", "is required for the envelope features"))
            if self.shaft_speed_rpm is None and self.shaft_speed_tag is None:
                out.append(("shaft_speed_rpm", "give shaft_speed_rpm or shaft_speed_tag for "
                                               "the envelope features"))
        return out

    def zone_limits(self) -> tuple[float, float, float] | None:
        if self.iso_class is not None:
            return ft.ISO_10816_1[self.iso_class]
        if self.iso_zones is not None and len(self.iso_zones) == 3:
            return (self.iso_zones[0], self.iso_zones[1], self.iso_zones[2])
        return None


class VibrationExtractor(_Base):
    kind = "vibration"

    def __init__(self, cfg: VibrationConfig, sample_rate: float, channels: tuple[str, ...],
                 window: int, hop: int) -> None:
        super().__init__(sample_rate, channels, window, hop)
        self._refuse(cfg.problems())
        nyq = self.sample_rate / 2
        if "envelope" in cfg.include and cfg.envelope_band_hi > nyq:
            raise ValueError(f"envelope band up to {cfg.envelope_band_hi} Hz exceeds Nyquist "
                             f"{nyq} Hz")
        self.cfg = cfg
        self.zone_limits = cfg.zone_limits()
        self.accel_scale = ft.G if cfg.accel_unit == "g" else 1.0
        per: list[str] = []
        if "basic" in cfg.include:
            per += ft.BASIC_NAMES
        if "iso" in cfg.include:
            per += ["iso_velocity_rms"] + (["iso_zone"] if self.zone_limits else [])
        if "envelope" in cfg.include:
            per += ENVELOPE_NAMES
        self.per_channel = tuple(per)
        self._names = tuple(f"{c}_{n}" for c in self.channels for n in per)

    def contract(self) -> dict[str, object]:
        c = self.cfg
        out: dict[str, object] = {
            "kind": "vibration", "sample_rate": self.sample_rate, "window": self.window,
            "hop": self.hop, "channels": list(self.channels), "include": list(c.include),
            "high_freq_cut": c.high_freq_cut, "spectrum_dtype": c.spectrum_dtype,
            "features": list(self._names),
            # the samples' unit: a model trained in g must not score samples in m/s2 (the
            # chain converts a source's g <-> m/s2 samples to this unit before windowing)
            "accel_unit": c.accel_unit,
        }
        if "iso" in c.include:
            out.update(iso_band=[c.iso_band_lo, c.iso_band_hi],
                       iso_zone_limits=list(self.zone_limits) if self.zone_limits else None)
        if "envelope" in c.include and c.shaft_speed_rpm is not None:
            # Envelope energies are taken at the bearing's defect frequencies, which scale with
            # shaft speed: the speed's *range* is part of the contract, not where it comes from
            # (a fixed speed here, a tag's values recorded at training; see
            # onnx_score.contract_differences).
            out.update(shaft_speed_range=[c.shaft_speed_rpm, c.shaft_speed_rpm])
        if "envelope" in c.include and c.bearing is not None:
            b = c.bearing
            out.update(envelope_band=[c.envelope_band_lo, c.envelope_band_hi],
                       envelope_harmonics=c.envelope_harmonics,
                       envelope_tolerance=c.envelope_tolerance,
                       bearing=[b.n_balls, b.ball_diameter, b.pitch_diameter,
                                b.contact_angle_deg])
        return out

    def speed_problem(self, shaft_rpm: float | None) -> str | None:
        """Why the envelope features cannot be computed with ``shaft_rpm`` (None: they can, or
        none are configured)."""
        if "envelope" not in self.cfg.include:
            return None
        rpm = shaft_rpm if shaft_rpm is not None else self.cfg.shaft_speed_rpm
        if rpm is None or not (math.isfinite(rpm) and rpm > 0):
            src = f"tag {self.cfg.shaft_speed_tag!r}" if self.cfg.shaft_speed_tag else "config"
            return f"envelope features need a shaft speed: none usable from {src} (got {rpm!r})"
        return None

    def absent(self, shaft_rpm: float | None) -> tuple[str | None, tuple[int, ...]]:
        """``(reason, columns)``: the feature columns :meth:`batch` leaves NaN for every window
        with this ``shaft_rpm`` (the envelope features without a usable speed), and why."""
        why = self.speed_problem(shaft_rpm)
        if why is None:
            return None, ()
        per = len(self.per_channel)
        return why, tuple(ci * per + j for ci in range(len(self.channels))
                          for j, n in enumerate(self.per_channel) if n in ENVELOPE_NAMES)

    def batch(self, windows: Sequence[Window], shaft_rpm: float | None = None) -> F64:
        """As :meth:`_Base.batch`; without a usable shaft speed the envelope columns are NaN
        and the other features are still computed (a row is bad only for those)."""
        why, cols = self.absent(shaft_rpm)
        if why is None:
            return super().batch(windows, shaft_rpm)
        with np.errstate(over="ignore", invalid="ignore"):
            rows = self._rows(windows, shaft_rpm)
        keep = np.ones(rows.shape[1], dtype=bool)
        keep[list(cols)] = False
        rows[~np.isfinite(rows[:, keep]).all(axis=1)] = np.nan
        return rows

    def _shaft(self, shaft_rpm: float | None) -> float | None:
        if self.speed_problem(shaft_rpm) is not None:
            return None
        return float(shaft_rpm if shaft_rpm is not None else self.cfg.shaft_speed_rpm or 0.0)

    def __call__(self, window: Window, shaft_rpm: float | None = None) -> dict[str, float]:
        why = self.speed_problem(shaft_rpm)
        if why is not None:
            raise FeatureError(why)
        return super().__call__(window, shaft_rpm)

    def _rows(self, windows: Sequence[Window], shaft_rpm: float | None) -> F64:
        c = self.cfg
        rpm = self._shaft(shaft_rpm)
        self._check(windows)
        n_w, n_ch = len(windows), len(self.channels)
        basic = "basic" in c.include
        iso_band = (c.iso_band_lo, c.iso_band_hi) if "iso" in c.include else None
        spectral = basic or iso_band is not None
        envelope = "envelope" in c.include and c.bearing is not None and rpm is not None
        raws = np.empty((n_ch, ft.RAW_ROWS, n_w)) if spectral else None
        env = np.empty((n_ch, n_w, len(ENVELOPE_NAMES))) if envelope else None
        bad = np.zeros(n_w, dtype=bool)
        ones = np.ones(self.window)
        for s in range(0, n_w, ft.CHUNK):      # chunks: the scratch arrays stay in cache
            chunk = windows[s:s + ft.CHUNK]
            e = s + len(chunk)
            for ci in range(n_ch):
                x = self._channel(chunk, ci)
                if not basic:                  # else: a non-finite mean flags the row below
                    bad[s:e] |= ~np.isfinite(x @ ones)
                if raws is not None:
                    ft.vibration_raw(x, raws[ci, :, s:e], self.sample_rate, c.high_freq_cut,
                                     basic, iso_band, c.spectrum_dtype)
                if env is not None and c.bearing is not None and rpm is not None:
                    env[ci, s:e] = envelope_energies(
                        x, self.sample_rate, c.bearing, rpm, c.envelope_band_lo,
                        c.envelope_band_hi, c.envelope_harmonics, c.envelope_tolerance)
        per = len(self.per_channel)
        out = np.empty((n_w, per * n_ch))
        for ci in range(n_ch):
            o = out[:, ci * per:(ci + 1) * per]
            j = 0
            if raws is not None:
                if basic:
                    bad |= ~np.isfinite(raws[ci, ft.R_MEAN])      # NaN/Inf anywhere in a row
                b, v = ft.vibration_finish(raws[ci], self.window, self.sample_rate, basic,
                                           None if iso_band is None else self.accel_scale)
                if b is not None:
                    o[:, :b.shape[1]] = b
                    j = b.shape[1]
                if v is not None:
                    o[:, j] = v
                    j += 1
                    if self.zone_limits:
                        o[:, j] = ft.iso_zone(v, self.zone_limits)
                        j += 1
            if env is not None:
                o[:, j:] = env[ci]
            elif "envelope" in c.include:
                o[:, j:] = np.nan             # no usable shaft speed: absent
        out[bad] = np.nan
        return out


def make_extractor(cfg: VibrationConfig | SoundConfig, sample_rate: float,
                   channels: tuple[str, ...], window: int, hop: int) -> Extractor:
    """Build the extractor for one source; raises ``ValueError`` when the settings cannot work."""
    if isinstance(cfg, VibrationConfig):
        return VibrationExtractor(cfg, sample_rate, channels, window, hop)
    if isinstance(cfg, SoundConfig):
        return SoundExtractor(cfg, sample_rate, channels, window, hop)
    raise TypeError(f"unknown feature config {type(cfg).__name__}")
