"""FFT plumbing shared by the feature functions: per-thread scratch arrays, row-wise real FFTs
into reused buffers and the cached weight matrices that turn spectral sums into one BLAS pass.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

CHUNK = 64            # windows per pass: scratch stays cache-resident, per-call overhead amortised


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


WORK = _Workspace()


def scratch(name: str, rows: int, cols: int, dtype: str = "float64") -> npt.NDArray[Any]:
    """A per-thread reusable ``(rows, cols)`` array (contents undefined; valid until the next
    call with the same name from the same thread)."""
    return WORK.get(name, rows, cols, dtype)
try:
    np.fft.rfft(np.zeros(4), out=np.empty(3, dtype=np.complex128))
    _NP_FFT_OUT = True
except TypeError:                     # numpy < 2
    _NP_FFT_OUT = False


def rowdot(a: F64, b: F64) -> F64:
    """``sum(a * b, axis=1)`` in one pass without a temporary (numpy >= 2: ``vecdot``)."""
    vecdot = getattr(np, "vecdot", None)
    out: F64 = vecdot(a, b) if vecdot is not None else np.einsum("ij,ij->i", a, b)
    return out


def rfft_rows(x: F64, dtype: str) -> npt.NDArray[np.complexfloating[Any, Any]]:
    """Real FFT of each row; float64 into a reused buffer (numpy >= 2 takes ``out=``), float32
    through scipy's pocketfft (numpy's float32 path is slower; scipy.fft is imported only here:
    it costs ~20 MB of RSS the default float64 path does without)."""
    m, n = x.shape
    if dtype == "float32":
        import scipy.fft as sfft

        x32 = WORK.get("x32", m, n, "float32")
        np.copyto(x32, x, casting="same_kind")
        out: npt.NDArray[np.complexfloating[Any, Any]] = sfft.rfft(x32, axis=1,
                                                                   overwrite_x=True)
        return out
    if _NP_FFT_OUT:
        out = np.fft.rfft(x, axis=1, out=WORK.get("spec", m, n // 2 + 1, "complex128"))
        return out
    out = np.fft.rfft(x, axis=1)
    return out


@lru_cache(maxsize=32)
def mean_weights(n: int) -> F64:
    return np.full(n, 1.0 / n)


@lru_cache(maxsize=32)
def amp_weights(n: int, sample_rate: float, dtype: str) -> npt.NDArray[np.floating[Any]]:
    """Columns (1, f): ``amp @ W`` gives ``sum(A)`` and ``sum(f * A)`` in one BLAS pass."""
    nb = n // 2 + 1
    w = np.stack([np.ones(nb), np.arange(nb) * (sample_rate / n)], axis=1).astype(dtype)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=32)
def power_weights(n: int, sample_rate: float, cut: float | None,
                   iso: tuple[float, float] | None, dtype: str
                   ) -> npt.NDArray[np.floating[Any]]:
    """Columns (1, f > cut) and/or the ISO velocity weights: ``|X|**2 @ W`` gives the total
    power, the power above the cut and the velocity sum in one BLAS pass."""
    nb = n // 2 + 1
    cols: list[F64] = []
    if cut is not None:
        cut_bin = math.floor(cut * n / sample_rate) + 1      # first bin with f > cut
        high = np.zeros(nb)
        high[cut_bin:] = 1.0
        cols += [np.ones(nb), high]
    if iso is not None:
        cols.append(iso_weights(n, sample_rate, iso[0], iso[1]))
    w = np.stack(cols, axis=1).astype(dtype)
    w.flags.writeable = False
    return w


@lru_cache(maxsize=32)
def iso_weights(n: int, sample_rate: float, f_lo: float, f_hi: float) -> F64:
    freqs = np.arange(n // 2 + 1) * (sample_rate / n)
    band = (freqs >= f_lo) & (freqs <= f_hi) & (freqs > 0)
    weight = np.zeros(freqs.size)
    weight[band] = 2.0 / (2.0 * np.pi * freqs[band]) ** 2
    if n % 2 == 0 and band[-1]:
        weight[-1] /= 2.0                      # the Nyquist bin is not mirrored
    weight.flags.writeable = False
    return weight
