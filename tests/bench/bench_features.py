"""Vibration features: 2 channels at 25.6 kHz, 2048-sample windows, 50 % overlap, one thread.

Prints how many times faster than real time each path runs, side by side with the plain
per-window numpy + scipy.stats reference. Run: ``.venv/bin/python tests/bench/bench_features.py``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

from edge_agent.confkit import build  # noqa: E402
from edge_agent.models import features as ft  # noqa: E402
from edge_agent.models.extract import VibrationConfig, make_extractor  # noqa: E402
from edge_agent.models.windowing import Windower  # noqa: E402
from edge_agent.records import WaveformBlock  # noqa: E402

FS, N, HOP, SECONDS = 25600.0, 2048, 1024, 10.0


def best(fn: Callable[[], object], repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def reference_window(x: np.ndarray) -> list[float]:
    n = len(x)
    rms = math.sqrt(float(np.mean(x ** 2)))
    amp = np.abs(np.fft.rfft(x)) / n * 2
    f = np.fft.rfftfreq(n, 1 / FS)
    k = int(np.argmax(amp[1:])) + 1
    return [rms, float(np.ptp(x)), float(scipy.stats.kurtosis(x)), float(scipy.stats.skew(x)),
            float(np.std(x)), float(np.mean(x)), float(np.max(np.abs(x)) / rms), float(f[k]),
            float(amp[k]), float(np.sum(f * amp) / np.sum(amp)),
            float(np.sum(amp[f > 1000] ** 2) / np.sum(amp ** 2))]


def main() -> None:
    rng = np.random.default_rng(0)
    n = int(FS * SECONDS)
    t = np.arange(n) / FS
    sig = np.stack([np.sin(2 * np.pi * 160 * t) + 0.3 * rng.standard_normal(n),
                    0.5 * np.sin(2 * np.pi * 320 * t) + 0.3 * rng.standard_normal(n)], axis=1)
    windows = Windower(N, HOP).push(WaveformBlock("bench", FS, ("h", "v"), 0.0, sig))
    frames = np.ascontiguousarray(np.stack([w.samples for w in windows]).transpose(2, 0, 1))
    n_win = len(windows)
    print(f"signal {SECONDS:.0f} s x 2 channels @ {FS:.0f} Hz -> {n_win} windows of {N}/{HOP}; "
          f"1 thread (threadpool env pinned)")

    rows: list[tuple[str, float]] = []
    rows.append(("reference: per window numpy + scipy.stats",
                 best(lambda: [reference_window(frames[c, i]) for c in range(2)
                               for i in range(n_win)], repeat=2)))
    rows.append(("features.basic_features on stacked frames",
                 best(lambda: [ft.basic_features(frames[c], FS) for c in range(2)])))
    basic = make_extractor(VibrationConfig(), FS, ("h", "v"), N, HOP)
    rows.append(("Extractor.batch(windows), basic", best(lambda: basic.batch(windows))))
    rows.append(("Extractor(window) per window, basic",
                 best(lambda: [basic(w) for w in windows], repeat=3)))
    iso = make_extractor(VibrationConfig(include=("basic", "iso"), iso_class="II"), FS,
                         ("h", "v"), N, HOP)
    rows.append(("Extractor.batch(windows), basic + iso", best(lambda: iso.batch(windows))))
    env_cfg = build(VibrationConfig, {
        "include": ["basic", "iso", "envelope"], "iso_class": "II", "shaft_speed_rpm": 1797.0,
        "bearing": {"n_balls": 9, "ball_diameter": 0.3126, "pitch_diameter": 1.537}})
    env = make_extractor(env_cfg, FS, ("h", "v"), N, HOP)
    rows.append(("Extractor.batch(windows), basic + iso + envelope",
                 best(lambda: env.batch(windows))))
    wd = Windower(N, HOP)
    blocks = [WaveformBlock("bench", FS, ("h", "v"), i / FS, sig[i:i + 2560])
              for i in range(0, n, 2560)]

    def windower_and_batch() -> None:
        wd.reset()
        ws = []
        for b in blocks:
            ws += wd.push(b)
        basic.batch(ws)

    rows.append(("Windower (0.1 s blocks) + Extractor.batch, basic", best(windower_and_batch)))
    ref_t = rows[0][1]
    print(f"{'path':52s} {'ms / 10 s':>10s} {'x real time':>12s} {'vs reference':>13s}")
    for name, sec in rows:
        print(f"{name:52s} {sec * 1e3:10.2f} {SECONDS / sec:12.0f} {ref_t / sec:12.1f}x")


if __name__ == "__main__":
    main()
