"""Fractional-octave band levels (octave or third-octave, IEC 61260 base-2 centres) per window.

A machine that develops a fault adds energy somewhere in its spectrum: an unbalanced fan raises
its rotation line, a clogged one its broadband flow noise, a rubbing part a high band. Band
levels in standard octave or third-octave bands describe that with few numbers whose meaning an
acoustician or a reliability engineer already knows (the same bands a sound level meter and the
classic "band alarm" of condition monitoring use). Unlike a cepstral summary, a change in one
band stays in one feature, so a baseline can watch each band on its own.

``BandLevels(sample_rate, window, per_octave, fmin)`` computes, for a window of ``window``
samples, the Hann-windowed power spectrum and, per band, the mean square of the signal in that
band in decibels re 1 unit² (``10 log10``; a 1 Pa rms tone in a band reads 0 dB, i.e. 94 dB SPL).
Band ``k`` has the centre ``1000 · 2^(k / per_octave)`` Hz and edges at ``centre · 2^(±1 / (2 ·
per_octave))``. Only bands at least two spectral bins wide are kept (the window's resolution
decides the lowest band: 1 Hz bins from a 1 s window reach down to 20 Hz), and bands must lie
below Nyquist. Empty (digitally silent) bands read ``FLOOR_DB``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

FLOOR_DB = -200.0
MIN_BINS = 2


class BandLevels:
    """Band levels of windows of a fixed length (see the module doc)."""

    def __init__(self, sample_rate: float, window: int, per_octave: int = 3,
                 fmin: float = 20.0) -> None:
        if per_octave not in (1, 3):
            raise ValueError(f"bands per octave must be 1 or 3, got {per_octave}")
        if not fmin > 0:
            raise ValueError(f"band_fmin must be > 0 Hz, got {fmin}")
        self.sample_rate, self.window = float(sample_rate), int(window)
        df = self.sample_rate / self.window
        half = 2.0 ** (1.0 / (2 * per_octave))
        nyq = self.sample_rate / 2
        k = math.ceil(per_octave * math.log2(fmin / 1000.0) - 1e-9)
        lo_bins: list[int] = []
        hi_bins: list[int] = []
        centres: list[float] = []
        while True:
            fc = 1000.0 * 2.0 ** (k / per_octave)
            lo, hi = fc / half, fc * half
            if hi > nyq:
                break
            a, b = math.ceil(lo / df), math.ceil(hi / df)  # bins with lo <= f < hi
            if b - a >= MIN_BINS:
                lo_bins.append(a)
                hi_bins.append(b)
                centres.append(fc)
            k += 1
        if not centres:
            raise ValueError(f"no band of at least {MIN_BINS} bins fits a {window}-sample window "
                             f"at {sample_rate:g} Hz from {fmin:g} Hz up: use a longer window")
        self.centres = tuple(centres)
        self._lo = np.array(lo_bins)
        self._hi = np.array(hi_bins)
        w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.window) / self.window)
        self._taper = w
        # one-sided power spectrum scaled so that summing bins gives the mean square
        self._scale = 2.0 / (self.window * float(np.sum(w * w)))

    def names(self) -> tuple[str, ...]:
        """``band_<centre>hz`` with the centre rounded to whole hertz."""
        return tuple(f"band_{round(fc)}hz" for fc in self.centres)

    def batch(self, X: F64) -> F64:
        """``(n, window)`` samples -> ``(n, n_bands)`` levels in dB re 1 unit²."""
        spec = np.fft.rfft(np.asarray(X, dtype=np.float64) * self._taper, axis=-1)
        p = (spec.real ** 2 + spec.imag ** 2) * self._scale
        c = np.cumsum(p, axis=-1)
        c = np.concatenate([np.zeros((c.shape[0], 1)), c], axis=-1)
        ms = c[:, self._hi] - c[:, self._lo]
        with np.errstate(divide="ignore"):
            out: F64 = np.maximum(10.0 * np.log10(np.maximum(ms, 0.0)), FLOOR_DB)
        return out
