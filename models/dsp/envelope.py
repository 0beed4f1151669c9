"""Envelope-spectrum energies at bearing defect frequencies.

The defect frequencies come from :mod:`edge_agent.bearing` (kinematics only, shared with the
simulator).

Envelope analysis per window (one channel): an ideal band-pass ``[band_lo, band_hi]`` and the
Hilbert transform in one FFT (keep the positive-frequency bins of the band, doubled; inverse
FFT gives the analytic band signal), envelope ``e = |analytic|``, mean removed, envelope
amplitude spectrum ``E = |rfft(e)| / n * 2``. The energy at a defect frequency ``fd`` is
``sum(E[k]**2)`` over the bins within ``± max(tolerance * h * fd, bin width)`` of each harmonic
``h * fd`` for ``h = 1..harmonics`` (units: input unit squared, e.g. g²). The frequency
resolution is ``fs / n``: separating BPFO, BSF and BPFI needs windows of ~0.5 s or more.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from edge_agent.bearing import BearingGeometry, defect_frequencies

__all__ = ["ENVELOPE_NAMES", "BearingGeometry", "defect_frequencies", "envelope_energies",
           "envelope_spectrum"]

F64 = npt.NDArray[np.float64]

DEFECTS: tuple[str, ...] = ("bpfo", "bpfi", "bsf", "ftf")
ENVELOPE_NAMES: tuple[str, ...] = tuple(f"env_{d}" for d in DEFECTS)


def envelope_spectrum(frames: npt.ArrayLike, sample_rate: float, band_lo: float,
                      band_hi: float) -> F64:
    """Envelope amplitude spectrum per row, ``(n_windows, n // 2 + 1)``."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    n = x.shape[1]
    if not (0 <= band_lo < band_hi <= sample_rate / 2):
        raise ValueError(f"envelope band [{band_lo}, {band_hi}] Hz must lie in "
                         f"[0, {sample_rate / 2}] (Nyquist)")
    spec = np.fft.rfft(x, axis=1)
    freqs = np.arange(spec.shape[1]) * (sample_rate / n)
    keep = (freqs >= band_lo) & (freqs <= band_hi) & (freqs > 0)
    if not keep.any():
        raise ValueError(f"envelope band [{band_lo}, {band_hi}] Hz holds no FFT bin at "
                         f"{sample_rate} Hz / {n} samples")
    full = np.zeros((x.shape[0], n), dtype=np.complex128)
    idx = np.flatnonzero(keep)
    full[:, idx] = 2.0 * spec[:, idx]
    if n % 2 == 0 and keep[-1]:
        full[:, n // 2] = spec[:, n // 2]      # Nyquist is not doubled
    env = np.abs(np.fft.ifft(full, axis=1))
    env -= env.mean(axis=1, keepdims=True)
    amp = np.abs(np.fft.rfft(env, axis=1))
    amp *= 2.0 / n
    out: F64 = amp
    return out


def band_energy(amp: F64, n: int, sample_rate: float, freq: float, harmonics: int = 3,
                tolerance: float = 0.02) -> F64:
    """Sum of ``amp**2`` around ``h * freq`` for ``h = 1..harmonics`` per row (see module doc)."""
    df = sample_rate / n
    nb = amp.shape[1]
    mask = np.zeros(nb, dtype=bool)
    for h in range(1, harmonics + 1):
        fc = h * freq
        half = max(tolerance * fc, df)
        lo = max(1, math.ceil((fc - half) / df))
        hi = min(nb - 1, math.floor((fc + half) / df))
        if lo <= hi:
            mask[lo:hi + 1] = True
    out: F64 = np.add.reduce(amp[:, mask] ** 2, axis=1) if mask.any() else np.zeros(len(amp))
    return out


def envelope_energies(frames: npt.ArrayLike, sample_rate: float, geom: BearingGeometry,
                      shaft_rpm: float, band_lo: float, band_hi: float, harmonics: int = 3,
                      tolerance: float = 0.02) -> F64:
    """Energies at BPFO, BPFI, BSF, FTF (in :data:`DEFECTS` order): ``(n_windows, 4)``."""
    if not (shaft_rpm > 0 and math.isfinite(shaft_rpm)):
        raise ValueError(f"shaft speed must be a positive number of rpm, got {shaft_rpm!r}")
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    amp = envelope_spectrum(x, sample_rate, band_lo, band_hi)
    fd = defect_frequencies(geom, shaft_rpm / 60.0)
    return np.stack([band_energy(amp, x.shape[1], sample_rate, fd[d], harmonics, tolerance)
                     for d in DEFECTS], axis=1)
