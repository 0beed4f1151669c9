"""MFCC on a 10 s 16 kHz clip, one thread: ours vs librosa vs the bare STFT, warm and cold;
and the octave band levels the shipped fan model uses (1 s windows every 0.25 s).

Run: ``.venv/bin/python tests/bench/bench_mfcc.py [path/to/clip.wav]`` (default: the first MIMII
normal clip under $EDGE_AGENT_TEST_DATA or ../shared/data, channel 0; a seeded noise clip
when the recordings are absent). "first call" runs in a fresh interpreter and is measured
beyond importing numpy and scipy.fft.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import _measure  # noqa: E402 - tests/bench/_measure.py
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def clip_path() -> Path | None:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    base = Path(os.environ.get("EDGE_AGENT_TEST_DATA", REPO.parent / "shared" / "data"))
    p = base / "mimii" / "fan_id_00" / "normal" / "00000000.wav"
    return p if p.is_file() else None


def load() -> tuple[np.ndarray, str]:
    p = clip_path()
    if p is None:
        rng = np.random.default_rng(0)
        return rng.standard_normal(160000).astype(np.float32) * 0.1, "seeded noise (no data)"
    from scipy.io import wavfile
    sr, x = wavfile.read(p)
    assert sr == 16000
    y = (x[:, 0] if x.ndim == 2 else x).astype(np.float32) / 32768.0
    return np.ascontiguousarray(y), f"{p.name} ch0"


def best(fns: dict[str, Callable[[], object]], rounds: int = 60) -> dict[str, tuple[float, float]]:
    return _measure.best(fns, rounds)


FRESH = """
import os, time, sys
for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[v] = "1"
t0 = time.perf_counter()
import numpy as np, scipy.fft
t1 = time.perf_counter()
y = (np.random.default_rng(0).standard_normal(160000) * 0.1).astype(np.float32)
t2 = time.perf_counter()
if sys.argv[1] == "ours":
    from edge_agent.models.dsp.mfcc import mfcc
    m = mfcc(y, 16000)
else:
    import librosa
    m = librosa.feature.mfcc(y=y, sr=16000)
t3 = time.perf_counter()
print(f"{t1 - t0:.4f} {t3 - t2:.4f} {m.shape}")
"""


def fresh(which: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", FRESH, which], capture_output=True, text=True,
                         check=True, timeout=300)
    imp, first, _ = out.stdout.split(maxsplit=2)
    return float(imp), float(first)


def main() -> None:
    import librosa
    from threadpoolctl import threadpool_limits

    from edge_agent.models.dsp.bands import BandLevels
    from edge_agent.models.dsp.mfcc import MFCC
    threadpool_limits(1)
    y, what = load()
    plan = MFCC(16000)
    bands = BandLevels(16000.0, 16000, 1, 20.0)
    frames = np.lib.stride_tricks.sliding_window_view(y.astype(np.float64), 16000)[::4000]
    rows = [
        ("librosa.feature.mfcc", lambda: librosa.feature.mfcc(y=y, sr=16000)),
        ("ours MFCC (plan)", lambda: plan(y)),
        ("ours MFCC + summary (mean/std)", lambda: plan.summary(y)),
        ("bare STFT, ours (pad+frame+hann+rfft)", lambda: plan.stft(y)),
        ("librosa.stft", lambda: librosa.stft(y)),
        (f"octave bands, {len(frames)} x 1 s windows", lambda: bands.batch(frames)),
    ]
    err = float(np.abs(plan(y) - librosa.feature.mfcc(y=y, sr=16000)).max())
    print(f"clip: {what}, {y.size} samples @ 16 kHz; 1 thread; max |ours - librosa| = {err:.2e}")
    res = best(dict(rows))
    lib, ours, stft = res[rows[0][0]], res[rows[1][0]], res[rows[3][0]]
    print(f"{'warm, best of 60 interleaved rounds':40s} {'wall ms':>9s} {'cpu ms':>9s}")
    for name, (w, c) in res.items():
        print(f"{name:40s} {w * 1e3:9.2f} {c * 1e3:9.2f}")
    print(f"speed-up vs librosa (wall): {lib[0] / ours[0]:.1f}x   (target >= 2x)")
    print(f"ours / bare STFT (wall):    {ours[0] / stft[0]:.2f}x  (target <= 1.5x)")
    for which in ("ours", "librosa"):
        runs = [fresh(which) for _ in range(3 if which == "ours" else 1)]
        imp = min(r[0] for r in runs)
        first = min(r[1] for r in runs)
        print(f"fresh process, {which:8s}: import numpy+scipy.fft {imp:.3f} s, then import + "
              f"first MFCC {first:.3f} s" + ("  (target <= 0.3 s)" if which == "ours" else ""))


if __name__ == "__main__":
    main()
