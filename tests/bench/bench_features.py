"""Vibration features: 2 channels at 25.6 kHz, 2048-sample windows, 50 % overlap, one thread.

Prints how many times faster than real time each path runs, side by side with the plain
per-window numpy + scipy.stats reference. Run: ``.venv/bin/python tests/bench/bench_features.py``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import math  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402

import _measure  # noqa: E402 - tests/bench/_measure.py
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

from edge_agent.models.dsp import features as ft  # noqa: E402
from edge_agent.models.dsp.extract import VibrationConfig, make_extractor  # noqa: E402
from edge_agent.models.dsp.windowing import Windower  # noqa: E402
from edge_agent.records import WaveformBlock  # noqa: E402
from edge_agent.settings import parse  # noqa: E402

FS, N, HOP, SECONDS = 25600.0, 2048, 1024, 10.0


def best(fns: Mapping[str, Callable[[], object]],
         rounds: int = 15) -> dict[str, tuple[float, float]]:
    return _measure.best(fns, rounds)


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

    basic = make_extractor(VibrationConfig(), FS, ("h", "v"), N, HOP)
    basic32 = make_extractor(VibrationConfig(spectrum_dtype="float32"), FS, ("h", "v"), N, HOP)
    iso = make_extractor(VibrationConfig(include=("basic", "iso"), iso_class="II"), FS,
                         ("h", "v"), N, HOP)
    env_cfg = parse(VibrationConfig, {
        "include": ["basic", "iso", "envelope"], "iso_class": "II", "shaft_speed_rpm": 1797.0,
        "bearing": {"n_balls": 9, "ball_diameter": 0.3126, "pitch_diameter": 1.537}})
    env = make_extractor(env_cfg, FS, ("h", "v"), N, HOP)
    wd = Windower(N, HOP)
    blocks = [WaveformBlock("bench", FS, ("h", "v"), i / FS, sig[i:i + 2560])
              for i in range(0, n, 2560)]

    def windower_and_batch() -> None:
        wd.reset()
        ws = []
        for b in blocks:
            ws += wd.push(b)
        basic.batch(ws)

    import scipy.fft as sfft
    flat = np.ascontiguousarray(frames.reshape(-1, N))
    x32 = np.empty((ft.CHUNK, N), np.float32)
    x64 = np.empty((ft.CHUNK, N))
    raw = np.empty((ft.RAW_ROWS, len(flat)))

    def chunks(fn: Callable[[np.ndarray, int], object]) -> Callable[[], None]:
        def run() -> None:
            for i in range(0, len(flat), ft.CHUNK):
                fn(flat[i:i + ft.CHUNK], i)
        return run

    def f32(x: np.ndarray) -> np.ndarray:
        np.copyto(x32[:len(x)], x, casting="same_kind")
        return x32[:len(x)]

    def gather() -> None:
        for i in range(0, n_win, ft.CHUNK):
            for c in range(2):
                for j, w in enumerate(windows[i:i + ft.CHUNK]):
                    x64[j] = w.samples[:, c]

    fast = {
        "floor: rfft float64 (numpy, out=), chunks": chunks(
            lambda x, i: np.fft.rfft(x, axis=1, out=np.empty((len(x), N // 2 + 1), complex))),
        "floor: rfft float64 (scipy), chunks": chunks(lambda x, i: sfft.rfft(x, axis=1)),
        "floor: cast + rfft float32 (scipy), chunks": chunks(
            lambda x, i: sfft.rfft(f32(x), axis=1, overwrite_x=True)),
        "floor: cast + rfft float32 + |X|, chunks": chunks(
            lambda x, i: np.abs(sfft.rfft(f32(x), axis=1, overwrite_x=True))),
        "floor: time-domain sums alone (mean..m4,max,min)": chunks(
            lambda x, i: ft._time_raw(x, raw[:, i:i + len(x)])),
        "floor: gather windows per channel (as Extractor)": gather,
        "features.basic_features on stacked frames": lambda: ft.basic_features(flat, FS),
        "features.basic_features, float32 spectrum":
            lambda: ft.basic_features(flat, FS, spectrum_dtype="float32"),
        "Extractor.batch(windows), basic": lambda: basic.batch(windows),
        "Extractor.batch(windows), basic, float32 spectrum": lambda: basic32.batch(windows),
        "Extractor.batch(windows), basic + iso": lambda: iso.batch(windows),
        "Extractor.batch(windows), basic + iso + envelope": lambda: env.batch(windows),
        "Windower (0.1 s blocks) + Extractor.batch, basic": windower_and_batch,
    }
    load0 = os.getloadavg()
    res = best(fast)
    slow = best({
        "reference: per window numpy + scipy.stats": lambda: [
            reference_window(frames[c, i]) for c in range(2) for i in range(n_win)],
        "Extractor(window) per window, basic": lambda: [basic(w) for w in windows],
    }, rounds=3)
    ref_t = slow["reference: per window numpy + scipy.stats"][1]
    print(f"load average before/after: {load0} / {os.getloadavg()} on {os.cpu_count()} CPUs "
          "(figures: minimum CPU time over interleaved rounds)")
    print(f"{'path (10 s of signal)':52s} {'wall ms':>8s} {'cpu ms':>8s} {'x RT (cpu)':>10s} "
          f"{'vs ref':>7s}")
    for name, (wall, cpu) in {**slow, **res}.items():
        print(f"{name:52s} {wall * 1e3:8.2f} {cpu * 1e3:8.2f} {SECONDS / cpu:10.0f} "
              f"{ref_t / cpu:6.0f}x")


if __name__ == "__main__":
    main()
