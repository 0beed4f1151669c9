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

Precision: the time-domain features are float64 (central moments from raw power sums, or
about the mean for rows with ``mean**2 > m2``; within ~1e-12 of scipy). ``spectrum_dtype=
"float32"`` runs the FFT and spectral sums in single precision: on the IMS and CWRU recordings
the worst relative errors are 1.5e-6 (high_freq_energy), 1.2e-6 (spectral_centroid) and 2.4e-7
(dominant_amplitude); the dominant bin is the reference's (a runner-up within 1e-5 sends the row
to numpy's float64 FFT). Its limit: a noise-free synthetic tone, whose float64 noise floor is
~1e-16 but float32's ~1e-7, moves the centroid by ~1e-5 relative.

ISO 10816/20816 velocity: :func:`iso_velocity_rms` integrates acceleration in the frequency
domain — ``V(f) = A(f) / (2 pi f)`` — and sums the band ``f_lo <= f <= f_hi`` (default
10-1000 Hz) by Parseval on the rectangular-window spectrum:
``v_rms**2 = (2 / n**2) * sum |X_k|**2 / (2 pi f_k)**2`` (the Nyquist bin counts once), in mm/s.
:func:`iso_zone` maps it to zone A..D as 0..3 with the ISO 10816-1 class limits in
:data:`ISO_10816_1` (a value equal to a limit belongs to the upper zone) or custom limits
(10816-3 groups).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_agent.models.dsp.spectrum import (
    CHUNK,
    WORK,
    amp_weights,
    mean_weights,
    power_weights,
    rfft_rows,
    rowdot,
)

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


# float32 spectrum: a runner-up bin within this relative amplitude of the maximum could be
# the float64 maximum instead (float32 FFT errors are ~1e-7 of the largest bin); such rows
# get their dominant bin from a float64 FFT so that ties resolve like the reference.
_TIE_REL = 1e-5


# Rows of the per-window intermediate sums (``raw``, shape ``(RAW_ROWS, n_windows)``).
(R_MEAN, R_S2, R_C2, R_C3, R_C4, R_CENTRED, R_MAX, R_MIN, R_K, R_TOP, R_SUM_A, R_SUM_FA,
 R_PTOT, R_PHIGH, R_ISO) = range(15)
RAW_ROWS = 15


def _moments_centered(x: F64) -> tuple[F64, F64, F64]:
    """Central moments m2, m3, m4 of each row through ``d = x - mean``."""
    n = x.shape[1]
    w = mean_weights(n)
    d = WORK.get("d", x.shape[0], n, "float64")
    d2 = WORK.get("d2", x.shape[0], n, "float64")
    np.subtract(x, (x @ w)[:, None], out=d)
    np.multiply(d, d, out=d2)
    return d2 @ w, rowdot(d2, d) / n, rowdot(d2, d2) / n


def _time_raw(x: F64, raw: F64) -> None:
    """Raw power sums ``s_k = mean(x**k)`` (one elementwise pass, four BLAS-speed
    reductions), max and min. The binomial expansion of :func:`_finish` turns them into central
    moments; it cancels when ``|mean| >> std``, so rows with ``mean**2 > m2`` get their central
    moments computed about the mean here instead (``R_CENTRED`` = 1). Error bound of the raw
    rows: ~20 eps relative on m2..m4."""
    m, n = x.shape
    w = mean_weights(n)
    x2 = WORK.get("d2", m, n, "float64")         # shared: the fallback runs after its last use
    np.multiply(x, x, out=x2)
    np.matmul(x, w, out=raw[R_MEAN])
    np.matmul(x2, w, out=raw[R_S2])
    raw[R_C2] = raw[R_S2]
    raw[R_C3] = rowdot(x2, x)
    raw[R_C4] = rowdot(x2, x2)
    raw[R_C3:R_C4 + 1] *= 1.0 / n
    np.max(x, axis=1, out=raw[R_MAX])
    np.min(x, axis=1, out=raw[R_MIN])
    mean = raw[R_MEAN]
    offset = ~(mean * mean <= raw[R_S2] - mean * mean)          # also catches NaN
    raw[R_CENTRED] = offset
    if offset.any():
        idx = np.flatnonzero(offset)
        m2, m3, m4 = _moments_centered(np.ascontiguousarray(x[idx]))
        raw[R_C2, idx], raw[R_C3, idx], raw[R_C4, idx] = m2, m3, m4


def _dominant(x: F64, amp: npt.NDArray[np.floating[Any]], exact: bool, raw: F64) -> None:
    """First maximum bin (DC excluded) and its ``|X|`` per row. With a float32 ``amp``
    (``exact`` false), rows whose runner-up is within :data:`_TIE_REL` are settled by a float64
    FFT, so that the bin is the reference's."""
    rows = np.arange(len(amp))
    k = np.argmax(amp[:, 1:], axis=1) + 1
    top = amp[rows, k]
    if not exact:
        amp[rows, k] = -1.0
        k2 = np.argmax(amp[:, 1:], axis=1) + 1
        amp[rows, k] = top
        near = np.flatnonzero(amp[rows, k2] >= top * (1.0 - _TIE_REL))
        if near.size:
            a64 = np.abs(np.fft.rfft(x[near], axis=1))      # the reference's FFT
            k[near] = np.argmax(a64[:, 1:], axis=1) + 1
            top = top.astype(np.float64)
            top[near] = a64[np.arange(near.size), k[near]]
    raw[R_K] = k
    raw[R_TOP] = top


def _spectral_raw(x: F64, sample_rate: float, cut: float | None,
                  iso: tuple[float, float] | None, dtype: str, raw: F64) -> None:
    """Spectral sums of one chunk: dominant bin and ``|X|``, ``sum |X|``, ``sum f |X|``
    (when ``cut`` is given) and ``|X|**2`` sums: total, above the cut, ISO-weighted."""
    n = x.shape[1]
    spec = rfft_rows(x, dtype)
    amp = np.abs(spec, out=WORK.get("amp", x.shape[0], spec.shape[1], dtype))
    if cut is not None:
        _dominant(x, amp, dtype == "float64", raw)
        raw[R_SUM_A:R_SUM_FA + 1] = (amp @ amp_weights(n, sample_rate, dtype)).T
    np.multiply(amp, amp, out=amp)                    # power |X|^2 from here on
    pw = (amp @ power_weights(n, sample_rate, cut, iso, dtype)).T
    if cut is not None:
        raw[R_PTOT:R_PHIGH + 1] = pw[:2]
    if iso is not None:
        raw[R_ISO] = pw[-1]


def vibration_raw(x: F64, raw: F64, sample_rate: float, high_freq_cut: float = 1000.0,
                  basic: bool = True, iso_band: tuple[float, float] | None = None,
                  spectrum_dtype: str = "float64") -> None:
    """Fill ``raw[:, i]`` (shape ``(RAW_ROWS, m)``, float64) for the rows of the contiguous
    float64 frames ``x`` ``(m, n)``; :func:`vibration_finish` turns the whole batch into features.
    Splitting the two lets a caller gather windows chunk by chunk (cache-sized scratch) and pay
    the per-call overhead of the final vector arithmetic once per batch."""
    for i in range(0, x.shape[0], CHUNK):
        xc, rc = x[i:i + CHUNK], raw[:, i:i + CHUNK]
        if basic:
            _time_raw(xc, rc)
        if basic or iso_band is not None:
            _spectral_raw(xc, sample_rate, high_freq_cut if basic else None, iso_band,
                          spectrum_dtype, rc)


def vibration_finish(raw: F64, n: int, sample_rate: float, basic: bool = True,
                     iso_scale: float | None = None) -> tuple[F64 | None, F64 | None]:
    """Basic features ``(m, 11)`` and/or ISO velocity RMS ``(m,)`` from :func:`vibration_raw`."""
    out: F64 | None = None
    v: F64 | None = None
    if basic:
        m = raw.shape[1]
        out = np.empty((m, len(BASIC_NAMES)))
        mean, s2, mx, mn = raw[R_MEAN], raw[R_S2], raw[R_MAX], raw[R_MIN]
        mu2 = mean * mean
        c2, c3, c4 = raw[R_C2], raw[R_C3], raw[R_C4]
        expand = raw[R_CENTRED] == 0.0
        m2 = np.where(expand, c2 - mu2, c2)
        m3 = np.where(expand, c3 - mean * (3.0 * c2 - 2.0 * mu2), c3)
        m4 = np.where(expand, c4 - mean * (4.0 * c3 - mean * (6.0 * c2 - 3.0 * mu2)), c4)
        rms = np.sqrt(s2)
        # scipy's "variance is zero" test (relative to the mean), plus exactly constant windows
        degenerate = (m2 <= (np.finfo(np.float64).eps * mean) ** 2) | (mx == mn)
        safe_m2 = np.where(degenerate, 1.0, m2)
        out[:, 0] = rms
        out[:, 1] = mx - mn
        out[:, 2] = np.where(degenerate, 0.0, m4 / (safe_m2 * safe_m2) - 3.0)
        out[:, 3] = np.where(degenerate, 0.0, m3 / np.abs(safe_m2) ** 1.5)
        out[:, 4] = np.sqrt(np.maximum(m2, 0.0))
        out[:, 5] = mean
        out[:, 6] = np.where(rms > 0, np.maximum(mx, -mn) / np.where(rms > 0, rms, 1.0), 0.0)
        total, ptot = raw[R_SUM_A], raw[R_PTOT]
        out[:, 7] = raw[R_K] * (sample_rate / n)
        out[:, 8] = raw[R_TOP] * (2.0 / n)
        out[:, 9] = np.where(total > 0, raw[R_SUM_FA] / np.where(total > 0, total, 1.0), 0.0)
        out[:, 10] = np.where(ptot > 0, raw[R_PHIGH] / np.where(ptot > 0, ptot, 1.0), 0.0)
    if iso_scale is not None:
        v = np.sqrt(np.maximum(raw[R_ISO], 0.0) / (n * n)) * (iso_scale * 1000.0)
    return out, v


def time_features(frames: npt.ArrayLike) -> F64:
    """The seven time-domain features, shape ``(n_windows, 7)`` in :data:`BASIC_NAMES` order."""
    x = np.ascontiguousarray(_as_frames(frames))
    raw = np.zeros((RAW_ROWS, x.shape[0]))
    for i in range(0, x.shape[0], CHUNK):
        _time_raw(x[i:i + CHUNK], raw[:, i:i + CHUNK])
    out, _ = vibration_finish(raw, x.shape[1], 1.0)
    assert out is not None
    return out[:, :7]


def amplitude_spectrum(frames: npt.ArrayLike) -> F64:
    """``np.abs(np.fft.rfft(x)) / n * 2`` per row."""
    x = _as_frames(frames)
    spec = np.abs(np.fft.rfft(x, axis=1))
    spec *= 2.0 / x.shape[1]
    out: F64 = spec
    return out


def vibration_features(frames: npt.ArrayLike, sample_rate: float, high_freq_cut: float = 1000.0,
                       basic: bool = True, iso: tuple[float, float, float] | None = None,
                       spectrum_dtype: Literal["float64", "float32"] = "float64",
                       ) -> tuple[F64 | None, F64 | None]:
    """Basic features ``(n_windows, 11)`` and/or ISO velocity RMS ``(n_windows,)`` in one pass.

    ``iso`` is ``(f_lo, f_hi, accel_scale)``. ``spectrum_dtype="float32"`` runs the FFT and the
    spectral sums in single precision (see the module doc for the accuracy); the time-domain
    features stay float64.
    """
    x = np.ascontiguousarray(_as_frames(frames))
    raw = np.empty((RAW_ROWS, x.shape[0]))
    vibration_raw(x, raw, sample_rate, high_freq_cut, basic,
                  None if iso is None else (iso[0], iso[1]), spectrum_dtype)
    return vibration_finish(raw, x.shape[1], sample_rate, basic,
                            None if iso is None else iso[2])


def basic_features(frames: npt.ArrayLike, sample_rate: float, high_freq_cut: float = 1000.0,
                   spectrum_dtype: Literal["float64", "float32"] = "float64") -> F64:
    """All eleven basic features, ``(n_windows, 11)`` in :data:`BASIC_NAMES` order."""
    out, _ = vibration_features(frames, sample_rate, high_freq_cut, True, None, spectrum_dtype)
    assert out is not None
    return out


def iso_velocity_rms(frames: npt.ArrayLike, sample_rate: float, f_lo: float = 10.0,
                     f_hi: float = 1000.0, accel_scale: float = G) -> F64:
    """Velocity RMS in mm/s over ``[f_lo, f_hi]`` from acceleration frames.

    ``accel_scale`` converts the samples to m/s² (``G`` for samples in g, 1.0 for m/s²).
    """
    _, v = vibration_features(frames, sample_rate, basic=False, iso=(f_lo, f_hi, accel_scale))
    assert v is not None
    return v


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
