"""MFCC and mel filterbank against librosa (a test-only dependency) on real MIMII clips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import librosa  # test dependency ([test] extra): a missing install must fail, not skip
import numpy as np
import pytest
from scipy.fft import dct
from scipy.io import wavfile

from edge_agent.models.dsp.mfcc import (
    MFCC,
    dct2_ortho_matrix,
    hann_periodic,
    mfcc,
    slaney_mel_filterbank,
)

TOL = 1e-3


def clips(data_dir: Path) -> list[Path]:
    found = sorted((data_dir / "mimii" / "fan_id_00").glob("*/*.wav"))
    assert len(found) == 22, f"expected the 22 MIMII clips, found {len(found)}"
    return found


def load(path: Path) -> tuple[int, np.ndarray]:
    sr, x = wavfile.read(path)           # WAVE_FORMAT_EXTENSIBLE, int16, 8 channels
    assert x.dtype == np.int16 and x.shape == (160000, 8)
    return sr, x.astype(np.float32) / 32768.0


@pytest.mark.parametrize(("sr", "n_fft", "n_mels", "fmin", "fmax"), [
    (16000, 2048, 128, 0.0, None), (22050, 2048, 128, 0.0, None), (16000, 1024, 40, 50.0, 7000.0),
    (48000, 4096, 64, 20.0, None), (8000, 256, 32, 0.0, 3000.0), (44100, 512, 96, 300.0, 12000.0),
])
def test_mel_filterbank_equals_librosa(sr: int, n_fft: int, n_mels: int, fmin: float,
                                       fmax: float | None) -> None:
    ours = slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.dtype == ref.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)


def test_window_and_dct_building_blocks() -> None:
    from scipy.signal import get_window
    np.testing.assert_allclose(hann_periodic(2048), get_window("hann", 2048),
                               atol=1e-15)
    rng = np.random.default_rng(1)
    s = rng.standard_normal((128, 5))
    np.testing.assert_allclose(dct2_ortho_matrix(20, 128) @ s,
                               dct(s, axis=0, type=2, norm="ortho")[:20], atol=1e-12)


def test_mfcc_equals_librosa_on_every_mimii_clip(data_dir: Path) -> None:
    worst = 0.0
    for path in clips(data_dir):
        sr, x = load(path)
        y = np.ascontiguousarray(x[:, 0])
        ref = librosa.feature.mfcc(y=y, sr=sr)
        got = mfcc(y, sr)
        assert got.shape == ref.shape == (20, 313)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= TOL, worst


def test_mfcc_equals_librosa_all_channels_and_float64(data_dir: Path) -> None:
    sr, x = load(clips(data_dir)[-1])           # an abnormal clip
    plan = MFCC(sr)
    for c in range(8):
        y = np.ascontiguousarray(x[:, c])
        assert np.abs(plan(y) - librosa.feature.mfcc(y=y, sr=sr)).max() <= TOL
    y64 = x[:, 3].astype(np.float64)
    assert np.abs(plan(y64) - librosa.feature.mfcc(y=y64, sr=sr)).max() <= TOL


@pytest.mark.parametrize("params", [
    {"n_mfcc": 13, "n_mels": 40, "n_fft": 1024, "hop": 256},
    {"n_mfcc": 30, "n_mels": 64, "n_fft": 512, "hop": 160, "fmin": 50.0, "fmax": 7600.0},
    {"n_mfcc": 20, "n_mels": 128, "n_fft": 4096, "hop": 1024, "fmin": 20.0},
])
def test_mfcc_configurable_params(data_dir: Path, params: dict[str, Any]) -> None:
    sr, x = load(clips(data_dir)[3])
    y = np.ascontiguousarray(x[:48000, 1])       # 3 s, odd number of frames
    lib = {"n_fft": "n_fft", "hop": "hop_length", "n_mels": "n_mels", "n_mfcc": "n_mfcc",
           "fmin": "fmin", "fmax": "fmax"}
    kw: dict[str, Any] = {lib[k]: v for k, v in params.items()}
    ref = librosa.feature.mfcc(y=y, sr=sr, **kw)
    got = mfcc(y, sr, **params)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= TOL


def test_top_db_floor_and_short_signals() -> None:
    sr = 16000
    t = np.arange(4000) / sr
    y = (np.sin(2 * np.pi * 440 * t) * np.exp(-t * 30)).astype(np.float32)   # decays to -100 dB
    y[2000:] = 0.0                                                           # exact silence
    for sig in (y, y[:700], y[:100], np.zeros(3000, np.float32)):
        ref = librosa.feature.mfcc(y=sig, sr=sr)
        got = mfcc(sig, sr)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= TOL


def test_summary_is_mean_then_std_per_coefficient() -> None:
    rng = np.random.default_rng(3)
    y = rng.standard_normal(16000).astype(np.float32)
    plan = MFCC(16000)
    m = librosa.feature.mfcc(y=y, sr=16000).astype(np.float64)
    s = plan.summary(y)
    assert s.shape == (40,)
    np.testing.assert_allclose(s[:20], m.mean(axis=1), atol=1e-3)
    np.testing.assert_allclose(s[20:], m.std(axis=1), atol=1e-3)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="n_mfcc"):
        MFCC(16000, n_mfcc=200, n_mels=128)
    with pytest.raises(ValueError, match="fmin"):
        MFCC(16000, fmin=9000.0, fmax=8000.0)
    with pytest.raises(ValueError, match="1-D"):
        MFCC(16000)(np.zeros((10, 2)))


def test_daemon_path_never_imports_librosa_or_numba() -> None:
    code = ("import sys, numpy as np\n"
            "from edge_agent.models.dsp import extract, mfcc, features, envelope, windowing\n"
            "ex = extract.make_extractor(extract.SoundConfig(), 16000.0, ('m',), 16000, 8000)\n"
            "mfcc.mfcc(np.zeros(16000, np.float32), 16000)\n"
            "bad = [m for m in ('librosa', 'numba', 'scipy.stats', 'sklearn')\n"
            "       if m in sys.modules]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.strip() == "", f"the daemon path imported {out.stdout.strip()}"
