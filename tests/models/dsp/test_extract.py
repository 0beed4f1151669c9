"""Extractor: config through settings, names and order, contract, batch == single, bad windows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats

from edge_agent.models.dsp.extract import (
    FeatureError,
    SoundConfig,
    VibrationConfig,
    make_extractor,
)
from edge_agent.models.dsp.features import BASIC_NAMES
from edge_agent.models.dsp.windowing import Window, Windower
from edge_agent.records import WaveformBlock
from edge_agent.settings import ConfigError, parse

BEARING = {"n_balls": 9, "ball_diameter": 0.3126, "pitch_diameter": 1.537}


def win(samples: np.ndarray, sr: float, ch: tuple[str, ...] = ("h", "v")) -> Window:
    return Window("s", 0.0, len(samples) / sr, sr, ch, samples)


def test_names_order_default_and_with_extras() -> None:
    ex = make_extractor(VibrationConfig(), 25600.0, ("h", "v"), 2048, 1024)
    assert ex.names() == tuple(f"h_{n}" for n in BASIC_NAMES) + tuple(f"v_{n}" for n in
                                                                       BASIC_NAMES)
    assert ex.names()[:3] == ("h_rms", "h_peak_to_peak", "h_kurtosis")
    cfg = parse(VibrationConfig, {"include": ["basic", "iso", "envelope"], "iso_class": "I",
                                  "bearing": BEARING, "shaft_speed_rpm": 1797.0})
    ex2 = make_extractor(cfg, 48000.0, ("de",), 32768, 16384)
    extras = ("de_iso_velocity_rms", "de_iso_zone", "de_env_bpfo", "de_env_bpfi", "de_env_bsf",
              "de_env_ftf")
    assert ex2.names() == (*(f"de_{n}" for n in BASIC_NAMES), *extras)
    c = ex2.contract()
    assert c["kind"] == "vibration" and c["window"] == 32768 and c["hop"] == 16384
    assert c["iso_zone_limits"] == [0.71, 1.8, 4.5] and c["envelope_band"] == [2000.0, 6000.0]
    assert c["features"] == list(ex2.names())
    iso_only = make_extractor(VibrationConfig(include=("iso",)), 25600.0, ("x",), 2048, 1024)
    assert iso_only.names() == ("x_iso_velocity_rms",)          # no class: no zone


def test_config_problems_are_reported() -> None:
    with pytest.raises(ConfigError) as err:
        parse(VibrationConfig, {"include": ["basic", "envelope"], "iso_zones": [3.0, 2.0, 5.0],
                                "iso_class": "II", "high_freq_cut": -1.0, "colour": "red"})
    text = str(err.value)
    assert "colour: unknown key" in text and "high_freq_cut: must be > 0" in text
    with pytest.raises(ConfigError) as err2:
        parse(VibrationConfig, {"include": ["basic", "envelope"], "iso_zones": [3.0, 2.0, 5.0],
                                "iso_class": "II"})
    t2 = str(err2.value)
    assert "bearing: is required" in t2 and "shaft_speed_rpm" in t2
    assert "iso_zones: must be 3 increasing" in t2 and "not both" in t2
    with pytest.raises(ConfigError, match="n_mfcc: must not exceed n_mels"):
        parse(SoundConfig, {"n_mfcc": 50, "n_mels": 40})
    ok = parse(VibrationConfig, {"include": ["iso"], "iso_zones": [2.3, 4.5, 7.1]})
    assert ok.zone_limits() == (2.3, 4.5, 7.1)
    with pytest.raises(ValueError, match="Nyquist"):
        make_extractor(VibrationConfig(include=("envelope",), bearing=parse(
            VibrationConfig, {"bearing": BEARING}).bearing, shaft_speed_rpm=1000.0),
            8000.0, ("x",), 4096, 2048)


def test_values_match_scipy_through_windower(data_dir: Path) -> None:
    raw = np.loadtxt(data_dir / "ims_1st_test" / "2003.10.22.12.09.13")
    ex = make_extractor(VibrationConfig(), 20000.0, ("h", "v"), 2048, 1024)
    w = Windower(2048, 1024)
    windows = []
    for i in range(0, 20480, 3000):                        # ragged blocks, like a driver
        windows += w.push(WaveformBlock("b1", 20000.0, ("h", "v"), 1e9 + i / 20000.0,
                                        raw[i:i + 3000, 0:2]))
    assert len(windows) == 19
    batch = ex.batch(windows)
    assert batch.shape == (19, 22)
    for k, wnd in enumerate(windows):
        d = ex(wnd)
        assert list(d) == list(ex.names())
        np.testing.assert_allclose(batch[k], [d[n] for n in ex.names()], rtol=1e-12)
        x = raw[k * 1024:k * 1024 + 2048, 1]
        assert d["v_kurtosis"] == pytest.approx(scipy.stats.kurtosis(x), rel=1e-9)
        assert d["v_skewness"] == pytest.approx(scipy.stats.skew(x), rel=1e-9)
        assert d["v_rms"] == pytest.approx(math.sqrt(np.mean(x ** 2)), rel=1e-12)


def test_nan_window_and_shaft_speed_errors() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 1))
    cfg = parse(VibrationConfig, {"include": ["basic", "envelope"], "bearing": BEARING,
                                  "shaft_speed_tag": "plc.motor_rpm"})
    ex = make_extractor(cfg, 25600.0, ("x",), 4096, 2048)
    with pytest.raises(FeatureError, match=r"plc\.motor_rpm"):
        ex(win(x, 25600.0, ("x",)))
    good = ex(win(x, 25600.0, ("x",)), shaft_rpm=1500.0)
    assert all(math.isfinite(v) for v in good.values())
    bad = x.copy()
    bad[7, 0] = np.nan
    with pytest.raises(FeatureError, match="NaN"):
        ex(win(bad, 25600.0, ("x",)), shaft_rpm=1500.0)
    rows = ex.batch([win(x, 25600.0, ("x",)), win(bad, 25600.0, ("x",))], shaft_rpm=1500.0)
    assert np.isfinite(rows[0]).all() and np.isnan(rows[1]).all()
    with pytest.raises(FeatureError, match="does not match"):
        ex(win(x[:2048], 25600.0, ("x",)), shaft_rpm=1500.0)
    fixed = make_extractor(parse(VibrationConfig, {"include": ["envelope"], "bearing": BEARING,
                                                   "shaft_speed_rpm": 1500.0}),
                           25600.0, ("x",), 4096, 2048)
    assert fixed(win(x, 25600.0, ("x",))) == pytest.approx(
        {f"x_env_{d}": good[f"x_env_{d}"] for d in ("bpfo", "bpfi", "bsf", "ftf")})


def test_iso_feature_through_extractor() -> None:
    t = np.arange(2048) / 25600.0
    x = np.stack([np.sin(2 * np.pi * 50.0 * t), 0.1 * np.sin(2 * np.pi * 50.0 * t)], axis=1)
    ex = make_extractor(VibrationConfig(include=("basic", "iso"), iso_class="II"), 25600.0,
                        ("h", "v"), 2048, 1024)
    d = ex(win(x, 25600.0))
    assert d["h_iso_velocity_rms"] == pytest.approx(22.0725, rel=1e-5)
    assert d["h_iso_zone"] == 3.0 and d["v_iso_zone"] == 1.0      # 22 mm/s: D; 2.2 mm/s: B
    mps = make_extractor(VibrationConfig(include=("iso",), accel_unit="m/s2"), 25600.0,
                         ("h", "v"), 2048, 1024)
    assert mps(win(x * 9.80665, 25600.0))["h_iso_velocity_rms"] == pytest.approx(22.0725,
                                                                                 rel=1e-5)


def test_sound_extractor_names_and_values() -> None:
    rng = np.random.default_rng(5)
    y = rng.standard_normal((16000, 2))
    ex = make_extractor(SoundConfig(n_mfcc=13), 16000.0, ("m0", "m1"), 16000, 8000)
    names = ex.names()
    assert names[:2] == ("m0_mfcc_mean_0", "m0_mfcc_mean_1") and names[13] == "m0_mfcc_std_0"
    assert len(names) == 52 and names[26] == "m1_mfcc_mean_0"
    d = ex(win(y, 16000.0, ("m0", "m1")))
    from edge_agent.models.dsp.mfcc import MFCC
    m = MFCC(16000.0, n_mfcc=13)(y[:, 1]).astype(np.float64)
    assert d["m1_mfcc_mean_4"] == pytest.approx(m[4].mean(), rel=1e-9)
    assert d["m1_mfcc_std_12"] == pytest.approx(m[12].std(), rel=1e-9)
    c = ex.contract()
    assert c["kind"] == "sound" and c["n_mfcc"] == 13 and c["n_mels"] == 128
    assert c["mfcc_hop"] == 512 and c["n_fft"] == 2048


def test_envelope_contract_carries_shaft_speed_and_refuses_other_speed(tmp_path: Path) -> None:
    from sklearn.ensemble import IsolationForest

    from edge_agent.models.onnx_score import ContractMismatch, Scorer
    from edge_agent.models.training.export import export_bundle

    def ex(extra: dict[str, object]) -> Any:
        cfg = parse(VibrationConfig, {"include": ["basic", "envelope"], "bearing": BEARING,
                                      **extra})
        return make_extractor(cfg, 48000.0, ("de",), 32768, 16384)

    at_1797, at_1500 = ex({"shaft_speed_rpm": 1797.0}), ex({"shaft_speed_rpm": 1500.0})
    tagged = ex({"shaft_speed_tag": "plc.rpm"})
    assert at_1797.contract()["shaft_speed_range"] == [1797.0, 1797.0]
    assert "shaft_speed_tag" not in tagged.contract()     # the speed's source is not contract
    # without the envelope group the contract is as before (shipped bundles keep loading)
    plain = make_extractor(VibrationConfig(include=("basic", "iso")), 25600.0, ("x",), 2048, 1024)
    assert not any(k.startswith("shaft") for k in plain.contract())
    names = at_1797.names()
    X = np.random.default_rng(0).normal(size=(300, len(names)))
    model = IsolationForest(n_estimators=10, random_state=0).fit(X)
    out = export_bundle(model, X, names, at_1797.contract(), tmp_path / "env", name="env",
                        version="1", kind="vibration", source={"kind": "test"})
    Scorer.load(out, expected_names=names, expected_contract=at_1797.contract())
    with pytest.raises(ContractMismatch, match="shaft speed: model was trained at 1797-1797"):
        Scorer.load(out, expected_names=names, expected_contract=at_1500.contract())
    # a pipeline reading the speed from a tag takes the fixed-speed model (the range is
    # checked while scoring); so does one at a speed within 2 %
    Scorer.load(out, expected_names=names, expected_contract=tagged.contract())
    Scorer.load(out, expected_names=names,
                expected_contract=ex({"shaft_speed_rpm": 1800.0}).contract())


@pytest.mark.parametrize("kind", ["vibration", "sound"])
def test_huge_finite_samples_give_feature_error_and_bad_rows(kind: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4096, 1))
    huge = x * 1e154                     # finite, but squares/powers overflow to inf
    assert np.isfinite(huge).all()
    if kind == "vibration":
        cfg: VibrationConfig | SoundConfig = parse(VibrationConfig, {
            "include": ["basic", "iso", "envelope"], "iso_class": "I", "bearing": BEARING,
            "shaft_speed_rpm": 1500.0})
    else:
        cfg = SoundConfig()
    ex = make_extractor(cfg, 25600.0, ("x",), 4096, 2048)
    with pytest.raises(FeatureError, match="non-finite features"):
        ex(win(huge, 25600.0, ("x",)))
    rows = ex.batch([win(x, 25600.0, ("x",)), win(huge, 25600.0, ("x",)),
                     win(x, 25600.0, ("x",))])
    assert np.isfinite(rows[0]).all() and np.isfinite(rows[2]).all()
    assert np.isnan(rows[1]).all()
