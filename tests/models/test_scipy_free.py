"""The daemon's path computes without scipy (its import costs tens of MB of RSS): the few
functions it took from scipy are replaced, and these check the replacements against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.fft import rfft as scipy_rfft
from scipy.special import kolmogorov as scipy_kolmogorov
from scipy.stats import norm

from edge_agent.models.calibration import calibrate
from edge_agent.models.drift import kolmogorov
from edge_agent.models.dsp.mfcc import MFCC


def test_kolmogorov_matches_scipy() -> None:
    xs = np.concatenate([np.linspace(0.0, 6.0, 6001), [1e-300, 0.039, 0.04, 0.041, 0.999999,
                                                        1.0, 1.000001, 10.0, 40.0, 1e300]])
    for x in xs:
        want = float(scipy_kolmogorov(x))
        assert kolmogorov(float(x)) == pytest.approx(want, rel=1e-12, abs=1e-300), x
    assert kolmogorov(-1.0) == 1.0
    assert kolmogorov(math.inf) == 0.0
    assert math.isnan(kolmogorov(math.nan))


@pytest.mark.parametrize("rate", [1e-6, 0.01, 1.0, 60.0, 1e4])
def test_calibration_z_matches_scipy(rate: float) -> None:
    rng = np.random.default_rng(3)
    cal = calibrate(rng.normal(0.3, 0.05, 4000), window_period=0.5,
                    false_alarms_per_hour=rate)
    p = cal.info["exceedance_per_decision"]
    assert cal.info["z"] == round(float(norm.isf(p)), 3)


def test_mfcc_spectrum_matches_scipy_fft() -> None:
    """numpy's FFT in float32 (complex64 out, as scipy.fft gave) within float32 rounding."""
    y = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    m = MFCC(16000.0)
    frames = m.frames(y)
    ours = m.stft(y)
    ref = scipy_rfft(frames, axis=1)
    assert ours.dtype == np.complex64
    assert np.max(np.abs(ours - ref)) <= 1e-5 * np.max(np.abs(ref))
