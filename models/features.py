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
import threading
from functools import lru_cache
from typing import Any, Literal

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


CHUNK = 32            # windows per pass: the temporaries stay in the L2 cache


class _Workspace(threading.local):
    """Per-thread scratch arrays, reused across calls: fresh multi-100-kB temporaries cost
    page faults on every call (glibc returns them to the OS), which dominated the run time."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, int, str], npt.NDArray[Any]] = {}

    def get(self, name: str, rows: int, cols: int, dtype: str) -> npt.NDArray[Any]:
        key = (name, cols, dtype)
        buf = self.bufs.get(key)
        if buf is None or buf.shape[0] < rows:
            buf = self.bufs[key] = np.empty((max(rows, CHUNK), cols), dtype=dtype)
        return buf[:rows]


_WORK = _Workspace()


def scratch(name: str, rows: int, cols: int, dtype: str = "float64") -> npt.NDArray[Any]:
    """A per-thread reusable ``(rows, cols)`` array (contents undefined; valid until the next
    call with the same name from the same thread)."""
    return _WORK.get(name, rows, cols, dtype)
try:
    np.fft.rfft(np.zeros(4), out=np.empty(3, dtype=np.complex128))
    _NP_FFT_OUT = True
except TypeError:                     # numpy < 2
    _NP_FFT_OUT = False


def _rfft(x: F64, dtype: str) -> npt.NDArray[np.complexfloating[Any, Any]]:
    """Real FFT of each row into a reused buffer (numpy >= 2 takes ``out=``)."""
    m, n = x.shape
    if dtype == "float64" and _NP_FFT_OUT:
        out: npt.NDArray[np.complexfloating[Any, Any]] = np.fft.rfft(
            x, axis=1, out=_WORK.get("spec", m, n // 2 + 1, "complex128"))
        return out
    if dtype == "float32":
        x32 = _WORK.get("x32", m, n, "float32")
        np.copyto(x32, x, casting="same_kind")
        out = sfft.rfft(x32, axis=1)
        return out
    out = sfft.rfft(x, axis=1)
    return out


@lru_cache(maxsize=32)
def _mean_weights(n: int) -> F64:
    return np.full(n, 1.0 / n)


@lru_cache(maxsize=32)
def _freq_axes(n: int, sample_rate: float, dtype: str) -> tuple[npt.NDArray[np.floating[Any]],
                                                                 npt.NDArray[np.floating[Any]]]:
    nb = n // 2 + 1
    return (np.arange(nb, dtype=dtype) * (sample_rate / n), np.ones(nb, dtype=dtype))


def _time_chunk(x: F64, out: F64) -> None:
    n = x.shape[1]
    w = _mean_weights(n)
    mean = x @ w                      # BLAS reductions: ~2x faster than np.sum here
    d = _WORK.get("d", x.shape[0], n, "float64")
    d2 = _WORK.get("d2", x.shape[0], n, "float64")
    np.subtract(x, mean[:, None], out=d)
    np.multiply(d, d, out=d2)
    m2 = d2 @ w
    d *= d2
    m3 = d @ w
    d2 *= d2
    m4 = d2 @ w
    mx = x.max(axis=1)
    mn = x.min(axis=1)
    rms = np.sqrt(m2 + mean * mean)
    # scipy's "variance is zero" test (relative to the mean), plus exactly constant windows
    degenerate = (m2 <= (np.finfo(np.float64).eps * mean) ** 2) | (mx == mn)
    safe_m2 = np.where(degenerate, 1.0, m2)
    out[:, 0] = rms
    out[:, 1] = mx - mn
    out[:, 2] = np.where(degenerate, 0.0, m4 / (safe_m2 * safe_m2) - 3.0)
    out[:, 3] = np.where(degenerate, 0.0, m3 / safe_m2 ** 1.5)
    out[:, 4] = np.sqrt(m2)
    out[:, 5] = mean
    peak = np.maximum(mx, -mn)
    out[:, 6] = np.where(rms > 0, peak / np.where(rms > 0, rms, 1.0), 0.0)


def _spectral_chunk(x: F64, sample_rate: float, cut: float, dtype: str, out: F64 | None,
                    iso: tuple[float, float, float] | None, iso_out: F64 | None) -> None:
    n = x.shape[1]
    spec = _rfft(x, dtype)
    amp = np.abs(spec, out=_WORK.get("amp", x.shape[0], spec.shape[1], dtype))
    nb = amp.shape[1]
    freqs, ones = _freq_axes(n, sample_rate, dtype)
    if out is not None:
        dc = amp[:, 0].copy()
        amp[:, 0] = -1.0                              # DC excluded from the argmax
        k = np.argmax(amp, axis=1)
        amp[:, 0] = dc
        dom = amp[np.arange(len(amp)), k]
        total = amp @ ones
        centroid = amp @ freqs
    amp *= amp                                        # power |X|^2 from here on
    if out is not None:
        cut_bin = math.floor(cut * n / sample_rate) + 1      # first bin with f > cut
        ptot = amp @ ones
        phigh = amp[:, cut_bin:] @ ones[cut_bin:] if cut_bin < nb else np.zeros(len(amp))
        out[:, 0] = k * (sample_rate / n)
        out[:, 1] = dom * (2.0 / n)
        out[:, 2] = np.where(total > 0, centroid / np.where(total > 0, total, 1.0), 0.0)
        out[:, 3] = np.where(ptot > 0, phigh / np.where(ptot > 0, ptot, 1.0), 0.0)
    if iso is not None and iso_out is not None:
        iso_out[:] = np.sqrt((amp @ _iso_weights(n, sample_rate, iso[0], iso[1])) /
                             (n * n)) * (iso[2] * 1000.0)


def time_features(frames: npt.ArrayLike) -> F64:
    """The seven time-domain features, shape ``(n_windows, 7)`` in :data:`BASIC_NAMES` order."""
    x = _as_frames(frames)
    out = np.empty((x.shape[0], 7))
    for i in range(0, x.shape[0], CHUNK):
        _time_chunk(x[i:i + CHUNK], out[i:i + CHUNK])
    return out


def amplitude_spectrum(frames: npt.ArrayLike) -> F64:
    """``np.abs(np.fft.rfft(x)) / n * 2`` per row."""
    x = _as_frames(frames)
    spec = np.abs(sfft.rfft(x, axis=1))
    spec *= 2.0 / x.shape[1]
    out: F64 = spec
    return out


def vibration_features(frames: npt.ArrayLike, sample_rate: float, high_freq_cut: float = 1000.0,
                       basic: bool = True, iso: tuple[float, float, float] | None = None,
                       spectrum_dtype: Literal["float64", "float32"] = "float64",
                       ) -> tuple[F64 | None, F64 | None]:
    """Basic features ``(n_windows, 11)`` and/or ISO velocity RMS ``(n_windows,)`` in one pass.

    ``iso`` is ``(f_lo, f_hi, accel_scale)``. ``spectrum_dtype="float32"`` runs the FFT and the
    spectral sums in single precision (about 2x faster; relative error ~1e-6, and the dominant
    bin may differ where two bins tie to ~1e-6); the time-domain features stay float64.
    """
    x = _as_frames(frames)
    m = x.shape[0]
    out = np.empty((m, len(BASIC_NAMES))) if basic else None
    v = np.empty(m) if iso is not None else None
    for i in range(0, m, CHUNK):
        xc = x[i:i + CHUNK]
        if out is not None:
            _time_chunk(xc, out[i:i + CHUNK, :7])
        _spectral_chunk(xc, sample_rate, high_freq_cut, spectrum_dtype,
                        None if out is None else out[i:i + CHUNK, 7:],
                        iso, None if v is None else v[i:i + CHUNK])
    return out, v


def basic_features(frames: npt.ArrayLike, sample_rate: float, high_freq_cut: float = 1000.0,
                   spectrum_dtype: Literal["float64", "float32"] = "float64") -> F64:
    """All eleven basic features, ``(n_windows, 11)`` in :data:`BASIC_NAMES` order."""
    out, _ = vibration_features(frames, sample_rate, high_freq_cut, True, None, spectrum_dtype)
    assert out is not None
    return out


@lru_cache(maxsize=32)
def _iso_weights(n: int, sample_rate: float, f_lo: float, f_hi: float) -> F64:
    freqs = np.arange(n // 2 + 1) * (sample_rate / n)
    band = (freqs >= f_lo) & (freqs <= f_hi) & (freqs > 0)
    weight = np.zeros(freqs.size)
    weight[band] = 2.0 / (2.0 * np.pi * freqs[band]) ** 2
    if n % 2 == 0 and band[-1]:
        weight[-1] /= 2.0                      # the Nyquist bin is not mirrored
    weight.flags.writeable = False
    return weight


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
