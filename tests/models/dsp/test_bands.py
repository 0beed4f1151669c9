"""Octave and third-octave band levels (models/dsp/bands.py) and the sound extractor's bands."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.models.dsp.bands import FLOOR_DB, BandLevels
from edge_agent.models.dsp.extract import SoundConfig, make_extractor
from edge_agent.models.dsp.windowing import Window

SR = 16000.0


def _tone(freq: float, rms: float, n: int = 16000) -> np.ndarray:
    t = np.arange(n) / SR
    return rms * np.sqrt(2) * np.sin(2 * np.pi * freq * t + 0.3)


@pytest.mark.parametrize(("per_octave", "freq"), [(1, 66.0), (1, 1000.0), (3, 66.0),
                                                  (3, 2500.0)])
def test_a_tone_reads_its_mean_square_in_its_own_band(per_octave: int, freq: float) -> None:
    b = BandLevels(SR, 16000, per_octave, 20.0)
    levels = b.batch(_tone(freq, 0.5)[None])[0]
    i = int(np.argmax(levels))
    lo, hi = (b.centres[i] * 2 ** (s / (2 * per_octave)) for s in (-1, 1))
    assert lo <= freq < hi
    assert levels[i] == pytest.approx(10 * np.log10(0.25), abs=0.1)  # 0.5 rms -> -6.02 dB
    assert np.sort(levels)[-2] < levels[i] - 40                     # Hann leakage stays local


def test_band_levels_add_up_to_the_signal_power() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.1, 16000)
    b = BandLevels(SR, 16000, 3, 20.0)
    total = 10 * np.log10(np.sum(10 ** (b.batch(x[None])[0] / 10)))
    covered = 2 ** (-1 / 6) * b.centres[0], 2 ** (1 / 6) * b.centres[-1]
    expected = 10 * np.log10(0.01 * (covered[1] - covered[0]) / (SR / 2))   # white noise share
    assert total == pytest.approx(expected, abs=0.3)


def test_short_windows_keep_only_bands_at_least_two_bins_wide() -> None:
    long_, short = BandLevels(SR, 16000, 3, 20.0), BandLevels(SR, 2048, 3, 20.0)
    assert long_.names()[0] == "band_25hz"
    assert short.centres[0] > 40                       # 7.8 Hz bins: narrow low bands dropped
    assert short.names()[-1] == long_.names()[-1]      # top band limited by Nyquist only
    with pytest.raises(ValueError, match="longer window"):
        BandLevels(SR, 8, 3, 20.0)
    silent = BandLevels(SR, 2048, 1, 20.0).batch(np.zeros((1, 2048)))
    assert (silent == FLOOR_DB).all()


def test_sound_extractor_puts_bands_after_mfcc_and_marks_bad_windows() -> None:
    cfg = SoundConfig(include=("mfcc", "bands"), n_mfcc=4, n_mels=16, bands_per_octave=1)
    ext = make_extractor(cfg, SR, ("mic",), 16000, 4000)
    names = ext.names()
    assert names[:8] == tuple(f"mic_mfcc_{k}_{i}" for k in ("mean", "std") for i in range(4))
    assert names[8:] == tuple(f"mic_{n}" for n in BandLevels(SR, 16000, 1, 20.0).names())
    good = Window("s", 0.0, 1.0, SR, ("mic",), _tone(1000.0, 0.1)[:, None])
    bad_samples = _tone(1000.0, 0.1)[:, None].copy()
    bad_samples[5] = np.nan
    bad = Window("s", 1.0, 2.0, SR, ("mic",), bad_samples)
    rows = ext.batch([good, bad])
    assert np.isfinite(rows[0]).all() and np.isnan(rows[1]).all()
    c = ext.contract()
    assert c["include"] == ["mfcc", "bands"] and c["bands_per_octave"] == 1
    mfcc_only = make_extractor(SoundConfig(), SR, ("mic",), 16000, 4000).contract()
    assert "include" not in mfcc_only and "bands_per_octave" not in mfcc_only  # unchanged
