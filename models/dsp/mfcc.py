"""MFCC equal to ``librosa.feature.mfcc`` (defaults) in numpy only (no scipy, no numba).

What :class:`MFCC` computes, step by step, is exactly librosa 0.10/0.11's default chain:

1. centred STFT: ``n_fft // 2`` zeros on both sides (``pad_mode="constant"``), frames every
   ``hop`` samples (``1 + len(y) // hop`` frames), periodic Hann window
   (``0.5 - 0.5 cos(2 pi n / n_fft)``), real FFT;
2. power spectrogram ``|X|**2``;
3. Slaney mel filterbank (:func:`slaney_mel_filterbank`, equal to ``librosa.filters.mel`` with
   ``htk=False, norm="slaney"``, float32, built here once — proven equal in the tests);
4. ``power_to_db``: ``10 log10(max(amin, S)) - 10 log10(max(amin, ref))`` (``ref=1``,
   ``amin=1e-10``), then floored at ``max - top_db`` (``top_db=80``), the maximum being taken
   over the whole signal passed in (for the agent: one window);
5. DCT-II with ``norm="ortho"`` over the mel axis, first ``n_mfcc`` coefficients (lifter 0).

Output layout is librosa's: ``(n_mfcc, n_frames)`` float32. The spectrogram runs in float32 like
librosa's does for float32 audio (float64 input too: the difference to librosa's float64 path is
far below the 1e-3 tolerance the tests enforce), the DCT in float64.

Speed: the mel projection skips the filterbank's zeros (filters are grouped in consecutive
blocks and each block multiplies only its frequency support), so the chain costs little more
than the STFT itself. Thread pinning is the caller's business (``OMP_NUM_THREADS`` etc.).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_F_SP = 200.0 / 3            # Slaney: linear part, Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: F64) -> F64:
    """Slaney mel scale (librosa ``hz_to_mel(htk=False)``)."""
    f = np.asarray(f, dtype=np.float64)
    mels = f / _F_SP
    log_t = f >= _MIN_LOG_HZ
    with np.errstate(divide="ignore"):
        logpart = _MIN_LOG_MEL + np.log(np.where(log_t, f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(log_t, logpart, mels)


def mel_to_hz(m: F64) -> F64:
    """Inverse of :func:`hz_to_mel` (librosa ``mel_to_hz(htk=False)``)."""
    m = np.asarray(m, dtype=np.float64)
    freqs = _F_SP * m
    log_t = m >= _MIN_LOG_MEL
    return np.where(log_t, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), freqs)


def slaney_mel_filterbank(sr: float, n_fft: int, n_mels: int = 128, fmin: float = 0.0,
                          fmax: float | None = None) -> F32:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)``.

    Shape ``(n_mels, 1 + n_fft // 2)``, float32, the same operations in the same precision
    (triangles in float64 stored as float32, then the float64 Slaney area norm applied).
    """
    if fmax is None:
        fmax = float(sr) / 2
    if not (0.0 <= fmin < fmax):
        raise ValueError(f"mel band needs 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    lo, hi = hz_to_mel(np.array([fmin, fmax]))
    mel_f = mel_to_hz(np.linspace(lo, hi, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:n_mels] / fdiff[:n_mels, None]
    upper = ramps[2:n_mels + 2] / fdiff[1:n_mels + 1, None]
    weights = np.maximum(0, np.minimum(lower, upper)).astype(np.float32)
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    out: F32 = (weights * enorm[:, None]).astype(np.float32)
    return out


def hann_periodic(n: int) -> F64:
    """``scipy.signal.get_window("hann", n, fftbins=True)`` without importing scipy.signal."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def dct2_ortho_matrix(n_out: int, n_in: int) -> F64:
    """Rows of the orthonormal DCT-II (``scipy.fft.dct(type=2, norm="ortho")``), (n_out, n_in)."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    m[0] /= math.sqrt(2.0)
    return m


class MFCC:
    """A precomputed MFCC plan for one sample rate and parameter set; call it on 1-D audio."""

    def __init__(self, sample_rate: float, n_mfcc: int = 20, n_mels: int = 128,
                 n_fft: int = 2048, hop: int = 512, fmin: float = 0.0,
                 fmax: float | None = None, top_db: float | None = 80.0, amin: float = 1e-10,
                 ref: float = 1.0, block: int = 16, chunk: int = 64) -> None:
        if n_fft < 2 or hop < 1 or n_mels < 1 or not (1 <= n_mfcc <= n_mels):
            raise ValueError(f"bad MFCC parameters: n_fft={n_fft}, hop={hop}, n_mels={n_mels}, "
                             f"n_mfcc={n_mfcc} (need n_fft>=2, hop>=1, 1<=n_mfcc<=n_mels)")
        if amin <= 0 or (top_db is not None and top_db < 0):
            raise ValueError("amin must be > 0 and top_db >= 0")
        self.sample_rate = float(sample_rate)
        self.n_mfcc, self.n_mels, self.n_fft, self.hop = n_mfcc, n_mels, n_fft, hop
        self.fmin, self.fmax = fmin, fmax
        self.top_db, self.amin, self.ref = top_db, amin, ref
        self.chunk = max(1, int(chunk))
        self.window: F32 = hann_periodic(n_fft).astype(np.float32)
        self.mel_basis = slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
        self.dct_t: F64 = np.ascontiguousarray(dct2_ortho_matrix(n_mfcc, n_mels).T)
        self._ref_db = 10.0 * math.log10(max(amin, ref))
        # Banded mel projection: groups of `block` consecutive filters with their support.
        self._groups: list[tuple[int, int, int, int, F32]] = []
        for g0 in range(0, n_mels, block):
            g1 = min(n_mels, g0 + block)
            nz = np.flatnonzero(self.mel_basis[g0:g1].any(axis=0))
            if nz.size == 0:
                continue
            b0, b1 = int(nz[0]), int(nz[-1]) + 1
            self._groups.append((g0, g1, b0, b1,
                                 np.ascontiguousarray(self.mel_basis[g0:g1, b0:b1].T)))

    def _padded_view(self, y: npt.ArrayLike) -> F32:
        """Read-only strided view ``(n_frames, n_fft)`` over the centred, zero-padded signal."""
        x = np.asarray(y, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"MFCC takes 1-D audio, got shape {x.shape}")
        pad = self.n_fft // 2
        xp = np.zeros(x.size + 2 * pad, dtype=np.float32)
        xp[pad:pad + x.size] = x
        n_frames = 1 + (xp.size - self.n_fft) // self.hop
        view: F32 = np.lib.stride_tricks.as_strided(
            xp, shape=(n_frames, self.n_fft), strides=(self.hop * 4, 4), writeable=False)
        return view

    def frames(self, y: npt.ArrayLike) -> F32:
        """Centred, zero-padded, windowed frames: shape ``(n_frames, n_fft)`` float32."""
        out: F32 = self._padded_view(y) * self.window
        return out

    def stft(self, y: npt.ArrayLike) -> npt.NDArray[np.complex64]:
        """The bare centred STFT, ``(n_frames, 1 + n_fft // 2)`` complex64 (the speed floor).

        Computed in chunks of :attr:`chunk` frames so the working set stays in cache.
        """
        view = self._padded_view(y)
        out = np.empty((view.shape[0], self.n_fft // 2 + 1), dtype=np.complex64)
        for i in range(0, view.shape[0], self.chunk):
            out[i:i + self.chunk] = np.fft.rfft(view[i:i + self.chunk] * self.window, axis=1)
        return out

    def mel_db(self, y: npt.ArrayLike) -> F32:
        """Log-mel spectrogram ``power_to_db(melspectrogram(y))``, shape ``(n_frames, n_mels)``."""
        view = self._padded_view(y)
        mel = np.zeros((view.shape[0], self.n_mels), dtype=np.float32)
        fbuf = np.empty((min(self.chunk, view.shape[0]), self.n_fft), dtype=np.float32)
        pbuf = np.empty((fbuf.shape[0], self.n_fft // 2 + 1), dtype=np.float32)
        for i in range(0, view.shape[0], self.chunk):
            fr = view[i:i + self.chunk]
            frames = np.multiply(fr, self.window, out=fbuf[:fr.shape[0]])
            spec = np.fft.rfft(frames, axis=1)
            power = np.abs(spec, out=pbuf[:fr.shape[0]])
            np.square(power, out=power)
            m = mel[i:i + self.chunk]
            for g0, g1, b0, b1, w in self._groups:
                np.matmul(power[:, b0:b1], w, out=m[:, g0:g1])
        floor = self.amin
        if self.top_db is not None and mel.size:
            # max(db, db.max() - top_db) == db of max(mel, mel.max() * 10**(-top_db/10))
            floor = max(floor, float(mel.max()) * 10.0 ** (-self.top_db / 10.0))
        np.maximum(mel, floor, out=mel)
        db = np.log(mel, out=mel)          # ln is ~3x faster than log10 in float32
        db *= np.float32(10.0 / math.log(10.0))
        if self._ref_db:
            db -= np.float32(self._ref_db)
        return db

    def __call__(self, y: npt.ArrayLike) -> F32:
        """MFCCs, shape ``(n_mfcc, n_frames)`` like ``librosa.feature.mfcc``."""
        # DCT in float64: a float32 matmul of a flat -100 dB frame is off by 1e-3 in c0
        out: F32 = (self.mel_db(y).astype(np.float64) @ self.dct_t).T.astype(np.float32)
        return out

    def summary(self, y: npt.ArrayLike) -> F64:
        """Per-coefficient mean then std (ddof 0) over frames: ``2 * n_mfcc`` values."""
        m = self(y).astype(np.float64)
        out: F64 = np.concatenate([m.mean(axis=1), m.std(axis=1)])
        return out


@lru_cache(maxsize=16)
def _plan(sr: float, n_mfcc: int, n_mels: int, n_fft: int, hop: int, fmin: float,
          fmax: float | None, top_db: float | None) -> MFCC:
    return MFCC(sr, n_mfcc, n_mels, n_fft, hop, fmin, fmax, top_db)


def mfcc(y: npt.ArrayLike, sr: float, n_mfcc: int = 20, n_mels: int = 128, n_fft: int = 2048,
         hop: int = 512, fmin: float = 0.0, fmax: float | None = None,
         top_db: float | None = 80.0) -> F32:
    """Cached-plan form: ``mfcc(y, sr)`` equals ``librosa.feature.mfcc(y=y, sr=sr)``."""
    return _plan(float(sr), n_mfcc, n_mels, n_fft, hop, fmin, fmax, top_db)(y)
