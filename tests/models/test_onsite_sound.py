"""Issue 17's sound target on the shared MIMII fan: an on-site baseline from normal clips only
(the shipped fan settings: octave band levels, band alarm, 5 s decisions) detects the abnormal
clips and leaves held-out normal clips quiet, for each rotation of the held-out clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.tools.onsite_mimii import ROTATIONS, clip_features, evaluate


@pytest.mark.parametrize("held_out", ROTATIONS)
def test_onsite_sound_baseline_per_held_out_split(data_dir: Path, tmp_path: Path,
                                                  held_out: tuple[int, ...]) -> None:
    normal, abnormal = _clips(data_dir)
    r = evaluate(normal, abnormal, held_out, tmp_path)
    assert r.auc >= 0.95
    assert r.abnormal_alarming >= 0.8
    assert r.normal_alarming <= 0.05


Clips = tuple[list[npt.NDArray[np.float64]], list[npt.NDArray[np.float64]]]
_CACHE: dict[Path, Clips] = {}


def _clips(data_dir: Path) -> Clips:
    if data_dir not in _CACHE:
        _CACHE[data_dir] = clip_features(data_dir / "mimii" / "fan_id_00")
    return _CACHE[data_dir]


def test_models_train_like_the_shipped_fan_learns_a_band_alarm(data_dir: Path,
                                                               tmp_path: Path) -> None:
    """A site engineer retrains "like the shipped model" from 9 normal clips: the band alarm and
    its deviation floor come from the bundle, the threshold is calibrated on 5 s decisions."""
    from edge_agent.agent.cli import main
    from edge_agent.models.builtin import BUNDLES, SPECS
    from edge_agent.models.onnx_score import Scorer
    from edge_agent.models.spec import names_contract

    clips = sorted((data_dir / "mimii" / "fan_id_00" / "normal").glob("*.wav"))[:9]
    out = tmp_path / "site_fan"
    assert main(["models", "train", "--from-files", *map(str, clips), "--like",
                 str(BUNDLES / "sound_mimii_fan"), "--channel", "0", "--decision-seconds", "5",
                 "--out", str(out), "--name", "site_fan"]) == 0
    names, contract = names_contract(SPECS["sound_mimii_fan"])
    m = Scorer.load(out, expected_names=names, expected_contract=contract).manifest
    assert m.score["estimator"] == "BandAlarm" and m.score["min_sd"] == 2.0
    assert m.score["calibration"]["decision_seconds"] == 5.0
    assert m.n_training_rows == 9 * 37
