"""Vibration features vs direct numpy / scipy.stats formulas, analytic signals, real IMS data."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from edge_agent.models.dsp import features as ft

FS = 25600.0
N = 2048


def reference(x: np.ndarray, fs: float, cut: float = 1000.0) -> dict[str, float]:
    """The central backend's definitions written out the plain way, one window at a time."""
    n = len(x)
    rms = math.sqrt(float(np.mean(x ** 2)))
    amp = np.abs(np.fft.rfft(x)) / n * 2
    f = np.fft.rfftfreq(n, 1.0 / fs)
    k = int(np.argmax(amp[1:])) + 1
    return {
        "rms": rms,
        "peak_to_peak": float(np.max(x) - np.min(x)),
        "kurtosis": float(scipy.stats.kurtosis(x)),
        "skewness": float(scipy.stats.skew(x)),
        "std": float(np.std(x)),
        "mean": float(np.mean(x)),
        "crest_factor": float(np.max(np.abs(x)) / rms),
        "dominant_frequency": float(f[k]),
        "dominant_amplitude": float(amp[k]),
        "spectral_centroid": float(np.sum(f * amp) / np.sum(amp)),
        "high_freq_energy": float(np.sum(amp[f > cut] ** 2) / np.sum(amp ** 2)),
    }


def check_against_reference(frames: np.ndarray, fs: float, cut: float = 1000.0) -> None:
    got = ft.basic_features(frames, fs, cut)
    assert got.shape == (len(frames), len(ft.BASIC_NAMES))
    for row, x in zip(got, frames, strict=True):
        ref = reference(x, fs, cut)
        for name, value in zip(ft.BASIC_NAMES, row, strict=True):
            assert value == pytest.approx(ref[name], rel=1e-9, abs=1e-12), name


def test_names_are_the_backend_names() -> None:
    assert ft.BASIC_NAMES == (
        "rms", "peak_to_peak", "kurtosis", "skewness", "std", "mean", "crest_factor",
        "dominant_frequency", "dominant_amplitude", "spectral_centroid", "high_freq_energy")


def test_random_and_skewed_signals_match_reference() -> None:
    rng = np.random.default_rng(7)
    frames = np.concatenate([
        rng.standard_normal((4, N)),
        rng.exponential(2.0, (3, N)) + 5.0,                    # skewed, with an offset
        rng.standard_t(3, (3, N)) * 0.01,                      # heavy tails, small scale
    ])
    check_against_reference(frames, FS)
    check_against_reference(frames[:, :1000], 10000.0, cut=2500.0)   # odd sizes, other cut


def test_real_ims_windows_match_reference(data_dir: Path) -> None:
    raw = np.loadtxt(data_dir / "ims_1st_test" / "2003.10.22.12.06.24")
    assert raw.shape == (20480, 8)
    for col in (0, 1, 6):
        x = raw[:, col]
        frames = np.lib.stride_tricks.sliding_window_view(x, 2048)[::1024][:8]
        check_against_reference(np.ascontiguousarray(frames), 20000.0)


def test_sine_analytic_values() -> None:
    a, f0 = 3.0, 1250.0               # bin-centred: 1250 / 12.5 = bin 100
    t = np.arange(N) / FS
    x = a * np.sin(2 * np.pi * f0 * t)
    r = dict(zip(ft.BASIC_NAMES, ft.basic_features(x, FS)[0], strict=True))
    assert r["rms"] == pytest.approx(a / math.sqrt(2), rel=1e-12)
    assert r["crest_factor"] == pytest.approx(math.sqrt(2), rel=1e-6)
    assert r["kurtosis"] == pytest.approx(-1.5, abs=1e-9)     # sine: m4/m2² = 1.5
    assert r["skewness"] == pytest.approx(0.0, abs=1e-9)
    assert r["mean"] == pytest.approx(0.0, abs=1e-12)
    assert r["dominant_frequency"] == f0
    assert r["dominant_amplitude"] == pytest.approx(a, rel=1e-9)
    assert r["spectral_centroid"] == pytest.approx(f0, rel=1e-9)
    assert r["high_freq_energy"] == pytest.approx(1.0, rel=1e-12)
    low = dict(zip(ft.BASIC_NAMES, ft.basic_features(x, FS, high_freq_cut=2000.0)[0],
                   strict=True))
    assert low["high_freq_energy"] == pytest.approx(0.0, abs=1e-20)


def test_two_tones_dominant_and_energy_split() -> None:
    t = np.arange(N) / FS
    x = 1.0 * np.sin(2 * np.pi * 250.0 * t) + 2.0 * np.sin(2 * np.pi * 5000.0 * t) + 0.5
    r = dict(zip(ft.BASIC_NAMES, ft.basic_features(x, FS)[0], strict=True))
    assert r["dominant_frequency"] == 5000.0             # DC (1.0 after x2 scaling) excluded
    assert r["dominant_amplitude"] == pytest.approx(2.0, rel=1e-9)
    # power: DC bin (2*0.5)^2 = 1, 250 Hz: 1, 5000 Hz: 4 -> fraction above 1 kHz = 4/6
    assert r["high_freq_energy"] == pytest.approx(4.0 / 6.0, rel=1e-9)
    assert r["spectral_centroid"] == pytest.approx((250 * 1 + 5000 * 2) / (1 + 1 + 2), rel=1e-9)


def test_degenerate_windows_are_finite() -> None:
    frames = np.stack([np.zeros(N), np.full(N, 4.2)])
    got = ft.basic_features(frames, FS)
    assert np.isfinite(got).all()
    zero = dict(zip(ft.BASIC_NAMES, got[0], strict=True))
    assert zero["kurtosis"] == zero["skewness"] == zero["crest_factor"] == 0.0
    const = dict(zip(ft.BASIC_NAMES, got[1], strict=True))
    assert const["mean"] == pytest.approx(4.2) and const["rms"] == pytest.approx(4.2)
    assert const["kurtosis"] == 0.0 and const["crest_factor"] == pytest.approx(1.0)
    with warnings.catch_warnings():   # scipy says NaN here; we say 0 (documented)
        warnings.simplefilter("ignore", RuntimeWarning)
        assert math.isnan(scipy.stats.kurtosis(frames[1]))


def test_finite_rows() -> None:
    frames = np.ones((3, 8))
    frames[1, 3] = np.nan
    frames[2, 0] = np.inf
    assert ft.finite_rows(frames).tolist() == [True, False, False]


def test_iso_velocity_by_hand() -> None:
    # 1 g at 50 Hz (bin 4): v = a / (2 pi f) peak -> RMS / sqrt(2), in mm/s
    t = np.arange(N) / FS
    x = np.sin(2 * np.pi * 50.0 * t)
    by_hand = 9.80665 / (2 * math.pi * 50.0) / math.sqrt(2) * 1000.0
    assert by_hand == pytest.approx(22.0725, rel=1e-5)
    assert ft.iso_velocity_rms(x, FS)[0] == pytest.approx(by_hand, rel=1e-9)
    assert ft.iso_velocity_rms(x * 9.80665, FS, accel_scale=1.0)[0] == pytest.approx(by_hand)
    # two tones: one inside, one outside the 10-1000 Hz band -> only the first counts
    y = x + 5.0 * np.sin(2 * np.pi * 2000.0 * t)
    assert ft.iso_velocity_rms(y, FS)[0] == pytest.approx(by_hand, rel=1e-9)
    # both inside: RMS adds in quadrature
    z = x + 2.0 * np.sin(2 * np.pi * 500.0 * t)
    v2 = 2.0 * 9.80665 / (2 * math.pi * 500.0) / math.sqrt(2) * 1000.0
    assert ft.iso_velocity_rms(z, FS)[0] == pytest.approx(math.hypot(by_hand, v2), rel=1e-9)
    # a tone below 10 Hz is excluded
    t4 = np.arange(4 * N) / FS                       # bin 3.125 Hz: 6.25 Hz is bin 2
    assert ft.iso_velocity_rms(np.sin(2 * np.pi * 6.25 * t4), FS)[0] == pytest.approx(0.0,
                                                                                      abs=1e-9)


def test_iso_velocity_nyquist_counts_once() -> None:
    n, fs = 64, 128.0
    x = np.cos(np.pi * np.arange(n))               # the Nyquist tone (64 Hz), amplitude 1
    v = ft.iso_velocity_rms(x, fs, f_lo=10.0, f_hi=64.0, accel_scale=1.0)[0]
    assert v == pytest.approx(1.0 / (2 * math.pi * 64.0) * 1000.0, rel=1e-9)


def test_iso_zones() -> None:
    lim = ft.ISO_10816_1["II"]
    assert lim == (1.12, 2.8, 7.1)
    got = ft.iso_zone([0.0, 1.11, 1.12, 2.79, 2.8, 7.09, 7.1, 50.0], lim).tolist()
    assert got == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [ft.zone_letter(z) for z in got[::2]] == ["A", "B", "C", "D"]
    assert ft.ISO_10816_1["I"] == (0.71, 1.8, 4.5) and ft.ISO_10816_1["IV"] == (2.8, 7.1, 18.0)
    with pytest.raises(ValueError, match="increasing"):
        ft.iso_zone([1.0], (2.0, 1.0, 3.0))


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ValueError, match="frames"):
        ft.basic_features(np.zeros((2, 3, 4)), FS)


# float32 spectrum: measured worst relative error over IMS, CWRU and synthetic windows is
# 1.5e-6 (high_freq_energy), 1.2e-6 (spectral_centroid), 2.4e-7 (dominant_amplitude); the
# dominant bin itself is the reference's (near-ties are settled in float64).
F32_REL = 1e-5


def check_float32(frames: np.ndarray, fs: float, cut: float = 1000.0) -> None:
    got = ft.basic_features(frames, fs, cut, spectrum_dtype="float32")
    for row, x in zip(got, frames, strict=True):
        ref = reference(x, fs, cut)
        for i, (name, value) in enumerate(zip(ft.BASIC_NAMES, row, strict=True)):
            if i < 7:                       # the time domain stays float64
                assert value == pytest.approx(ref[name], rel=1e-9, abs=1e-12), name
            elif name == "dominant_frequency":
                assert value == ref[name]
            else:                           # a fraction: absolute floor of float32 round-off
                assert value == pytest.approx(ref[name], rel=F32_REL,
                                              abs=1e-6 if name == "high_freq_energy" else 0)


def test_float32_spectrum_within_tolerance_of_reference(data_dir: Path) -> None:
    rng = np.random.default_rng(11)
    check_float32(np.concatenate([rng.standard_normal((4, N)),
                                  rng.exponential(2.0, (2, N)) + 5.0]), FS)
    raw = np.loadtxt(data_dir / "ims_1st_test" / "2003.10.22.12.14.13")
    frames = np.concatenate([np.lib.stride_tricks.sliding_window_view(raw[:, c], 2048)[::1024]
                             for c in range(0, 8, 3)])
    check_float32(np.ascontiguousarray(frames), 20000.0)
    t = np.arange(N) / FS
    check_float32(np.stack([3.0 * np.sin(2 * np.pi * 1257.3 * t),          # off-bin, clean
                            np.sin(2 * np.pi * 250.0 * t)                  # ~nothing above
                            + 1e-5 * rng.standard_normal(N)]), FS)         # the cut; 17-bit
    # The limit: a noise-free bin-centred tone has a float64 noise floor of ~1e-16 but a float32
    # one of ~1e-7, and the centroid sums that floor times f over 1000 bins: 1.5e-5 here.
    clean = np.sin(2 * np.pi * 250.0 * t)
    c32 = ft.basic_features(clean, FS, spectrum_dtype="float32")[0, 9]
    assert c32 == pytest.approx(250.0, rel=1e-4) and c32 != pytest.approx(250.0, rel=1e-6)


def test_float32_near_tie_resolves_like_float64() -> None:
    t = np.arange(N) / FS
    # equal tones at bins 40 and 200: float32 round-off alone would pick either
    x = np.sin(2 * np.pi * 500.0 * t) + np.sin(2 * np.pi * 2500.0 * t)
    frames = np.stack([x, x[::-1].copy(), x + 1e-9 * np.cos(2 * np.pi * 2500.0 * t)])
    f64 = ft.basic_features(frames, FS)
    f32 = ft.basic_features(frames, FS, spectrum_dtype="float32")
    np.testing.assert_array_equal(f32[:, 7], f64[:, 7])
    np.testing.assert_allclose(f32[:, 8], f64[:, 8], rtol=1e-12)   # settled in float64
    for row, ref_x in zip(f32, frames, strict=True):
        assert row[7] == reference(ref_x, FS)["dominant_frequency"]


def test_offset_windows_take_the_centred_path() -> None:
    # |mean| >> std: the raw power sums would cancel; those rows are recomputed about the mean
    rng = np.random.default_rng(3)
    frames = np.concatenate([1e3 + 0.1 * rng.standard_t(4, (3, N)),        # big DC offset
                             0.2 + rng.standard_normal((2, N))])          # raw-sum path
    check_against_reference(frames, FS)
    kurt = ft.time_features(frames)[:, 2]
    np.testing.assert_allclose(kurt, scipy.stats.kurtosis(frames, axis=1), rtol=1e-9)
