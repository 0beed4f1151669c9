"""Sound features: MFCC summary (mean and spread per coefficient) and fractional-octave band
levels, per channel (layout in :mod:`edge_agent.models.dsp.extract`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from edge_agent.models.dsp.bands import BandLevels
from edge_agent.models.dsp.extractbase import F64, _Base
from edge_agent.models.dsp.mfcc import MFCC
from edge_agent.models.dsp.windowing import Window
from edge_agent.settings import Model

SoundGroup = Literal["mfcc", "bands"]


class SoundConfig(Model):
    kind: Literal["sound"] = "sound"
    include: tuple[SoundGroup, ...] = Field(("mfcc",), min_length=1)
    bands_per_octave: Literal[1, 3] = 3
    band_fmin: float = Field(20.0, gt=0)
    n_mfcc: int = Field(20, ge=1)
    n_mels: int = Field(128, ge=1)
    n_fft: int = Field(2048, ge=16)
    hop: int = Field(512, ge=1)
    fmin: float = Field(0.0, ge=0)
    fmax: float | None = Field(None, gt=0)
    top_db: float | None = Field(80.0, ge=0)

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if len(set(self.include)) != len(self.include):
            out.append(("include", "lists a group twice"))
        if self.n_mfcc > self.n_mels:
            out.append(("n_mfcc", "must not exceed n_mels"))
        if self.fmax is not None and self.fmax <= self.fmin:
            out.append(("fmax", "must be above fmin"))
        return out


class SoundExtractor(_Base):
    kind = "sound"

    def __init__(self, cfg: SoundConfig, sample_rate: float, channels: tuple[str, ...],
                 window: int, hop: int) -> None:
        super().__init__(sample_rate, channels, window, hop)
        self._refuse(cfg.problems())
        if cfg.fmax is not None and cfg.fmax > self.sample_rate / 2:
            raise ValueError(f"fmax {cfg.fmax} Hz exceeds Nyquist {self.sample_rate / 2} Hz")
        self.cfg = cfg
        self.mfcc = MFCC(self.sample_rate, cfg.n_mfcc, cfg.n_mels, cfg.n_fft, cfg.hop, cfg.fmin,
                         cfg.fmax, cfg.top_db) if "mfcc" in cfg.include else None
        self.bands = BandLevels(self.sample_rate, self.window, cfg.bands_per_octave,
                                cfg.band_fmin) if "bands" in cfg.include else None
        per: list[str] = []
        if self.mfcc is not None:
            per += [f"mfcc_mean_{i}" for i in range(cfg.n_mfcc)] + \
                   [f"mfcc_std_{i}" for i in range(cfg.n_mfcc)]
        if self.bands is not None:
            per += list(self.bands.names())
        self.per_channel = tuple(per)
        self._names = tuple(f"{c}_{n}" for c in self.channels for n in per)

    def contract(self) -> dict[str, object]:
        c = self.cfg
        out: dict[str, object] = {
            "kind": "sound", "sample_rate": self.sample_rate, "window": self.window,
            "hop": self.hop, "channels": list(self.channels), "n_mfcc": c.n_mfcc,
            "n_mels": c.n_mels, "n_fft": c.n_fft, "mfcc_hop": c.hop, "fmin": c.fmin,
            "fmax": c.fmax, "top_db": c.top_db}
        if self.bands is not None:  # MFCC-only contracts stay as they always were
            out.update(include=list(c.include), bands_per_octave=c.bands_per_octave,
                       band_fmin=c.band_fmin)
        out["features"] = list(self._names)
        return out

    def _rows(self, windows: Sequence[Window], shaft_rpm: float | None) -> F64:
        self._check(windows)
        per = len(self.per_channel)
        out = np.empty((len(windows), per * len(self.channels)))
        n_mfcc = 2 * self.cfg.n_mfcc if self.mfcc is not None else 0
        bad = [wi for wi, w in enumerate(windows) if not np.isfinite(w.samples).all()]
        for ci in range(len(self.channels)):
            base = ci * per
            if self.bands is not None and windows:
                out[:, base + n_mfcc:base + per] = self.bands.batch(self._channel(windows, ci))
            if self.mfcc is None:
                continue
            for wi, w in enumerate(windows):
                if wi not in bad:
                    out[wi, base:base + n_mfcc] = self.mfcc.summary(w.samples[:, ci])
        out[bad] = np.nan
        return out
