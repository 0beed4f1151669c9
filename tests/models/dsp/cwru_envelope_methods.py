"""Envelope-analysis variants on the four CWRU files (the history of the ball-record test).

Not a test (not collected): run ``.venv/bin/python tests/models/dsp/cwru_envelope_methods.py``.
Every method is applied identically to all four files (drive end, 32768-sample windows, 50 %
overlap, energies averaged over windows). Per file it prints the highest of BPFO/BPFI/BSF
(O/I/B), the ratio of the highest to the second, and the file's highest energy over the healthy
file's highest (``h``). Methods: fixed 2-6 kHz band (the shipped default); squared envelope
spectrum (SES); band chosen per window by a 1/2-1/3 binary-tree kurtogram of the complex
envelope (Antoni's fast kurtogram, 6 levels); cepstral pre-whitening (``X / |X|``); AR
(linear-prediction) residual pre-whitening; peak over local median background; each defect
with its modulation family (BPFI +- shaft, BSF +- FTF) as energy in excess of the local median.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
import scipy.io
import scipy.linalg
import scipy.signal

from edge_agent.bearing import BearingGeometry, defect_frequencies

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]
GEOM = BearingGeometry(n_balls=9, ball_diameter=0.3126, pitch_diameter=1.537,
                       contact_angle_deg=0.0)
FS, N = 48000.0, 32768
FILES = {"inner": "48k_Drive_End_IR007_0_109.mat", "outer": "48k_Drive_End_OR007@6_0_135.mat",
         "ball": "48k_Drive_End_B007_0_122.mat", "healthy": "normal_0_97.mat"}
DATA = Path(os.environ.get("EDGE_AGENT_TEST_DATA",
                           Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def load(name: str) -> tuple[F64, float]:
    m = scipy.io.loadmat(DATA / "cwru" / name)
    x = np.ravel(m[next(k for k in m if k.endswith("_DE_time"))]).astype(np.float64)
    rpm = float(np.ravel(m[next(k for k in m if k.endswith("RPM"))])[0])
    return np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(x, N)[::N // 2]), rpm


def analytic(spec: C128, lo: float, hi: float) -> C128:
    f = np.arange(spec.shape[1]) * FS / N
    idx = np.flatnonzero((f >= lo) & (f <= hi) & (f > 0))
    full = np.zeros((spec.shape[0], N), complex)
    full[:, idx] = 2 * spec[:, idx]
    out: C128 = sfft.ifft(full, axis=1)
    return out


def kurtogram_bands(spec: C128, levels: int = 6) -> list[tuple[float, float]]:
    """Per row, the band of the 1/2-1/3 tree whose decimated complex envelope is most kurtic."""
    cands = [(i * FS / 2 / p, (i + 1) * FS / 2 / p)
             for lv in range(1, levels + 1) for p in (2 ** lv, 3 * 2 ** (lv - 1))
             for i in range(p)]
    df, nb = FS / N, spec.shape[1]
    sk = []
    for lo, hi in cands:
        a, b = max(1, math.ceil(lo / df)), min(nb - 1, math.floor(hi / df))
        p = np.abs(sfft.ifft(spec[:, a:b + 1], axis=1)) ** 2
        sk.append((p ** 2).mean(1) / p.mean(1) ** 2 - 2)
    return [cands[i] for i in np.argmax(np.array(sk), axis=0)]


def ar_residual(x: F64, order: int) -> F64:
    out = np.empty_like(x)
    for i, row in enumerate(x):
        r = sfft.irfft(np.abs(sfft.rfft(row, 2 * N)) ** 2)[:order + 1] / N
        a = scipy.linalg.solve_toeplitz(r[:order], r[1:order + 1])
        out[i] = scipy.signal.lfilter(np.concatenate([[1.0], -a]), [1.0], row)
        out[i, :order] = 0.0
    return out


def scores(amp: F64, fd: dict[str, float], fr: float, harmonics: int, mode: str,
           family: bool) -> F64:
    """(rows, 3) scores for BPFO, BPFI, BSF from the envelope amplitude spectrum."""
    df, nb, p = FS / N, amp.shape[1], amp ** 2
    mods = {"bpfo": 0.0, "bpfi": fr, "bsf": fd["ftf"]}
    out = np.zeros((len(p), 3))
    for j, d in enumerate(("bpfo", "bpfi", "bsf")):
        for h in range(1, harmonics + 1):
            centres = [h * fd[d]] + ([h * fd[d] - mods[d], h * fd[d] + mods[d]]
                                     if family and mods[d] else [])
            for fc in centres:
                half = max(0.02 * fc, df)
                lo, hi = max(1, math.ceil((fc - half) / df)), min(nb - 1,
                                                                  math.floor((fc + half) / df))
                w = max(0.1 * fc, 10 * df)
                bg = np.median(p[:, max(1, int((fc - w) / df)):min(nb, int((fc + w) / df) + 1)],
                               axis=1)
                if mode == "sum":
                    out[:, j] += p[:, lo:hi + 1].sum(1)
                elif mode == "excess":
                    out[:, j] += np.maximum(p[:, lo:hi + 1] - bg[:, None], 0).sum(1)
                else:                                     # peak over background
                    out[:, j] += p[:, lo:hi + 1].max(1) / bg / len(centres)
    return out


def method(pre: str = "", band: tuple[float, float] | None = (2000.0, 6000.0),
           squared: bool = False, harmonics: int = 3, mode: str = "sum",
           family: bool = False) -> Callable[[F64, float], F64]:
    def run(x: F64, rpm: float) -> F64:
        fd = defect_frequencies(GEOM, rpm / 60)
        if pre.startswith("ar"):
            x = ar_residual(x, int(pre[2:]))
        spec = sfft.rfft(x, axis=1)
        if pre == "cpw":
            spec = spec / np.maximum(np.abs(spec), 1e-300)
        if band is None:
            env = np.empty((len(x), N))
            for i, (lo, hi) in enumerate(kurtogram_bands(spec)):
                env[i] = np.abs(analytic(spec[i:i + 1], lo, hi)[0])
        else:
            env = np.abs(analytic(spec, *band))
        if squared:
            env = env ** 2
        env -= env.mean(axis=1, keepdims=True)
        amp = np.abs(sfft.rfft(env, axis=1)) * 2 / N
        out: F64 = scores(amp, fd, rpm / 60, harmonics, mode, family).mean(0)
        return out
    return run


METHODS: dict[str, Callable[[F64, float], F64]] = {
    "envelope 2-6 kHz, energy (shipped)": method(),
    "squared envelope (SES) 2-6 kHz": method(squared=True),
    "fast-kurtogram band, envelope": method(band=None),
    "fast-kurtogram band, SES": method(band=None, squared=True),
    "cepstral pre-whitening, env 2-6 kHz": method(pre="cpw"),
    "cepstral pre-whitening, SES 0.5-23 kHz": method(pre="cpw", band=(500, 23000), squared=True),
    "AR(32) residual, SES 0.5-23 kHz": method(pre="ar32", band=(500, 23000), squared=True),
    "AR(100) residual, env 2-6 kHz": method(pre="ar100"),
    "peak / local median, env 2-6 kHz": method(mode="ratio"),
    "families (BPFI+-fr, BSF+-FTF), excess": method(mode="excess", family=True),
    "families, excess, SES": method(mode="excess", family=True, squared=True),
    "families, excess, 5 harmonics": method(mode="excess", family=True, harmonics=5),
}


def main() -> None:
    data = {k: load(f) for k, f in FILES.items()}
    print(f"{'method':40s} " + "  ".join(f"{k:>18s}" for k in FILES))
    for name, fn in METHODS.items():
        e = {k: fn(*v) for k, v in data.items()}
        h = e["healthy"].max()
        cells = []
        for k in FILES:
            s = np.sort(e[k])
            top = 'OIB'[int(np.argmax(e[k]))]
            cells.append(f"{top} r{s[-1] / s[-2]:5.2f} h{e[k].max() / h:7.1f}")
        print(f"{name:40s} " + "  ".join(f"{c:>18s}" for c in cells))


if __name__ == "__main__":
    main()
