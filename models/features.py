"""Vibration features per window and channel, batched over windows: the central backend's
definitions.

Every function takes ``frames`` of shape ``(n_windows, n)`` (one channel, one window per row,
float64) and returns one value per window. For a window ``x`` of ``n`` samples at rate ``fs``:

=====================  ====================================================================
``rms``                ``sqrt(mean(x**2))``
``peak_to_peak``       ``max(x) - min(x)``
``kurtosis``           ``scipy.stats.kurtosis(x)`` — Fisher (excess, normal = 0), biased:
                       ``m4 / m2**2 - 3`` with central moments ``mk = mean((x - mean(x))**k)``
``skewness``           ``scipy.stats.skew(x)`` — biased: ``m3 / m2**1.5``
``std``                ``np.std(x)`` (ddof 0)
``mean``               ``np.mean(x)``
``crest_factor``       ``max(|x|) / rms``
``dominant_frequency`` with ``A = np.abs(np.fft.rfft(x)) / n * 2`` (rectangular window, every
                       bin including DC and Nyquist scaled by 2) and ``f = k * fs / n``:
                       ``f[k*]`` where ``k* = argmax(A[1:]) + 1`` (DC excluded; first maximum)
``dominant_amplitude`` ``A[k*]``
``spectral_centroid``  ``sum(f * A) / sum(A)`` over all bins (DC included, weighs 0 in the sum)
``high_freq_energy``   ``sum(A[f > cut]**2) / sum(A**2)`` over all bins: a fraction in [0, 1]
=====================  ====================================================================

Degenerate windows: scipy returns NaN for the skewness/kurtosis of a constant window and the
crest factor would divide by zero; NaN never leaves the agent, so here they are 0.0 (also
``spectral_centroid`` and ``high_freq_energy`` of an all-zero window). A window containing
NaN/Inf is the caller's to reject (:func:`finite_rows`).

ISO 10816/20816 velocity: :func:`iso_velocity_rms` integrates acceleration in the frequency
domain — ``V(f) = A(f) / (2 pi f)`` — and sums the band ``f_lo <= f <= f_hi`` (default
10-1000 Hz) by Parseval on the rectangular-window spectrum:
``v_rms**2 = (2 / n**2) * sum |X_k|**2 / (2 pi f_k)**2`` (the Nyquist bin counts once), in mm/s.
:func:`iso_zone` maps it to zone A..D as 0..3 with the ISO 10816-1 class limits in
:data:`ISO_10816_1` (a value equal to a limit belongs to the upper zone) or custom limits
(10816-3 groups).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

F64 = npt.NDArray[np.float64]

BASIC_NAMES: tuple[str, ...] = (
    "rms", "peak_to_peak", "kurtosis", "skewness", "std", "mean", "crest_factor",
    "dominant_frequency", "dominant_amplitude", "spectral_centroid", "high_freq_energy",
)
ISO_NAMES: tuple[str, ...] = ("iso_velocity_rms", "iso_zone")
G = 9.80665  # m/s² per g

# ISO 10816-1 zone limits A/B, B/C, C/D in mm/s RMS, per machine class.
ISO_10816_1: dict[str, tuple[float, float, float]] = {
    "I": (0.71, 1.8, 4.5),
    "II": (1.12, 2.8, 7.1),
    "III": (1.8, 4.5, 11.2),
    "IV": (2.8, 7.1, 18.0),
}
ZONE_LETTERS = ("A", "B", "C", "D")


def _as_frames(frames: npt.ArrayLike) -> F64:
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"frames must be (n_windows, n>=2), got shape {x.shape}")
    return x


def finite_rows(frames: F64) -> npt.NDArray[np.bool_]:
    """True for each window (row) whose samples are all finite."""
    out: npt.NDArray[np.bool_] = np.asarray(np.isfinite(frames).all(axis=-1))
    return out


def time_features(frames: npt.ArrayLike) -> F64:
    """The seven time-domain features, shape ``(n_windows, 7)`` in :data:`BASIC_NAMES` order."""
    x = _as_frames(frames)
    n = x.shape[1]
    mean = np.add.reduce(x, axis=1) / n
    d = x - mean[:, None]
    d2 = d * d
    m2 = np.add.reduce(d2, axis=1) / n
    d *= d2
    m3 = np.add.reduce(d, axis=1) / n
    d2 *= d2
    m4 = np.add.reduce(d2, axis=1) / n
    mx = x.max(axis=1)
    mn = x.min(axis=1)
    rms = np.sqrt(m2 + mean * mean)
    # scipy's own "is the variance zero" test (relative to the mean), giving 0 instead of NaN
    degenerate = m2 <= (np.finfo(np.float64).eps * mean) ** 2
    safe_m2 = np.where(degenerate, 1.0, m2)
    skew = np.where(degenerate, 0.0, m3 / safe_m2 ** 1.5)
    kurt = np.where(degenerate, 0.0, m4 / (safe_m2 * safe_m2) - 3.0)
    peak = np.maximum(mx, -mn)
    crest = np.where(rms > 0, peak / np.where(rms > 0, rms, 1.0), 0.0)
    return np.stack([rms, mx - mn, kurt, skew, np.sqrt(m2), mean, crest], axis=1)


def amplitude_spectrum(frames: npt.ArrayLike) -> F64:
    """``np.abs(np.fft.rfft(x)) / n * 2`` per row."""
    x = _as_frames(frames)
    spec = np.abs(sfft.rfft(x, axis=1))
    spec *= 2.0 / x.shape[1]
    out: F64 = spec
    return out


def spectral_features(amp: F64, n: int, sample_rate: float, high_freq_cut: float) -> F64:
    """Dominant frequency/amplitude, centroid, high-frequency energy fraction: ``(n_windows, 4)``.

    ``amp`` is :func:`amplitude_spectrum` of windows of ``n`` samples.
    """
    nb = amp.shape[1]
    df = sample_rate / n
    freqs = np.arange(nb) * df
    k = np.argmax(amp[:, 1:], axis=1) + 1
    dom_amp = np.take_along_axis(amp, k[:, None], axis=1)[:, 0]
    total = np.add.reduce(amp, axis=1)
    centroid = np.where(total > 0, (amp @ freqs) / np.where(total > 0, total, 1.0), 0.0)
    cut_bin = math.floor(high_freq_cut / df) + 1       # first bin with f > cut
    p = amp * amp
    ptot = np.add.reduce(p, axis=1)
    phigh = np.add.reduce(p[:, cut_bin:], axis=1) if cut_bin < nb else np.zeros(len(p))
    hfe = np.where(ptot > 0, phigh / np.where(ptot > 0, ptot, 1.0), 0.0)
    return np.stack([k * df, dom_amp, centroid, hfe], axis=1)


def basic_features(frames: npt.ArrayLike, sample_rate: float,
                   high_freq_cut: float = 1000.0) -> F64:
    """All eleven basic features, ``(n_windows, 11)`` in :data:`BASIC_NAMES` order."""
    x = _as_frames(frames)
    amp = amplitude_spectrum(x)
    return np.concatenate([time_features(x),
                           spectral_features(amp, x.shape[1], sample_rate, high_freq_cut)],
                          axis=1)


def iso_velocity_rms(frames: npt.ArrayLike, sample_rate: float, f_lo: float = 10.0,
                     f_hi: float = 1000.0, accel_scale: float = G,
                     spectrum: npt.NDArray[np.complex128] | None = None) -> F64:
    """Velocity RMS in mm/s over ``[f_lo, f_hi]`` from acceleration frames.

    ``accel_scale`` converts the samples to m/s² (``G`` for samples in g, 1.0 for m/s²).
    ``spectrum`` may pass a precomputed ``rfft`` of the frames.
    """
    x = _as_frames(frames)
    n = x.shape[1]
    spec = sfft.rfft(x, axis=1) if spectrum is None else spectrum
    freqs = np.arange(spec.shape[1]) * (sample_rate / n)
    band = (freqs >= f_lo) & (freqs <= f_hi) & (freqs > 0)
    weight = np.zeros(spec.shape[1])
    weight[band] = 2.0 / (2.0 * np.pi * freqs[band]) ** 2
    if n % 2 == 0 and band[-1]:
        weight[-1] /= 2.0                      # the Nyquist bin is not mirrored
    p = spec.real * spec.real + spec.imag * spec.imag
    v2 = (p @ weight) / (n * n)
    out: F64 = np.sqrt(v2) * accel_scale * 1000.0
    return out


def iso_zone(v_rms: npt.ArrayLike, limits: tuple[float, float, float]) -> npt.NDArray[np.int64]:
    """Zone index 0..3 (A..D) for velocity RMS values with limits (A/B, B/C, C/D)."""
    lim = np.asarray(limits, dtype=np.float64)
    if lim.shape != (3,) or not np.all(np.diff(lim) > 0) or lim[0] <= 0:
        raise ValueError(f"ISO zone limits must be 3 increasing positive values, got {limits}")
    out: npt.NDArray[np.int64] = np.searchsorted(lim, np.asarray(v_rms, dtype=np.float64),
                                                 side="right").astype(np.int64)
    return out


def zone_letter(zone: int) -> str:
    """0..3 -> "A".."D"."""
    return ZONE_LETTERS[int(zone)]
