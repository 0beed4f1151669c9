"""``edge-agent models score``: recordings through the daemon's chain, one result per file."""

from __future__ import annotations

import argparse
import json
import sys
import types
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from scipy.signal import resample_poly

from edge_agent.models.builtin import BUNDLES
from edge_agent.models.cli import add_commands
from edge_agent.models.score_cmd import DIAGNOSIS

CWRU = BUNDLES / "vibration_cwru_de"
KEYS = {"file", "windows", "anomalous", "score_median", "alarm", "diagnosis"}


def score(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    ap = argparse.ArgumentParser(prog="edge-agent")
    add_commands(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["models", "score", *argv, "--json"])
    rc = int(args.func(args))
    return rc, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_fault_files_alarm_and_the_healthy_one_does_not(
        data_dir: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    d = data_dir / "cwru"
    faults = sorted(str(p) for p in d.glob("48k_*.mat"))
    rc, res = score(capsys, str(CWRU), *faults)
    assert rc == 0 and len(res) == 3
    for r in res:
        # no --bearing: the diagnosis cannot run, and says so rather than guessing
        assert set(r) == KEYS and r["diagnosis"]["fault"] == "undetermined"
        assert r["alarm"] and r["windows"] > 200 and r["anomalous"] > 0.9 * r["windows"]
    rc, res = score(capsys, str(CWRU), str(d / "normal_0_97.mat"))
    assert rc == 1 and "--sample-rate" in res[0]["error"]       # the name states no rate
    rc, res = score(capsys, str(CWRU), str(d / "normal_0_97.mat"), "--sample-rate", "48000")
    assert rc == 0 and not res[0]["alarm"] and res[0]["anomalous"] < 0.05 * res[0]["windows"]
    assert res[0]["score_median"] < res[0]["score_median"] + 1


def test_a_faster_recording_is_resampled_to_the_bundle_rate(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = scipy.io.loadmat(data_dir / "cwru" / "48k_Drive_End_OR007@6_0_135.mat")
    key = next(k for k in m if k.endswith("_DE_time"))
    x96 = resample_poly(np.ravel(m[key])[:192000], 2, 1)  # 4 s: longer than raise_after
    scipy.io.savemat(tmp_path / "135.mat", {"X135_DE_time": x96[:, None],
                                            "fs": np.array([[96000.0]])})
    rc, res = score(capsys, str(CWRU), str(tmp_path / "135.mat"))
    assert rc == 0 and res[0]["alarm"] and res[0]["windows"] >= 40


def test_diagnosis_is_called_when_the_module_exists(
        data_dir: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def diagnose(samples: np.ndarray, sample_rate: float, shaft_hz: float,
                 bearing: Any) -> dict[str, Any]:
        calls.append((samples.shape, sample_rate, shaft_hz, bearing.n_balls))
        return {"fault": "outer_race", "confidence": 0.9, "evidence": {"bpfo": 1}, "x": 1}

    mod = types.ModuleType(DIAGNOSIS)
    mod.__spec__ = ModuleSpec(DIAGNOSIS, None)
    mod.diagnose = diagnose  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, DIAGNOSIS, mod)
    f = str(data_dir / "cwru" / "48k_Drive_End_OR007@6_0_135.mat")
    rc, res = score(capsys, str(CWRU), f, "--bearing", "9,0.3126,1.537")
    assert rc == 0
    assert res[0]["diagnosis"] == {"fault": "outer_race", "confidence": 0.9,
                                   "evidence": {"bpfo": 1}}
    (shape, rate, shaft_hz, n_balls), = calls
    assert len(shape) == 1 and shape[0] > 200_000       # one channel at the file rate
    assert rate == 48000.0 and shaft_hz == pytest.approx(1796 / 60, rel=0.01) and n_balls == 9
    # without a bearing geometry: undetermined, saying why
    rc, res = score(capsys, str(CWRU), f)
    assert res[0]["diagnosis"]["fault"] == "undetermined"
    assert "bearing" in res[0]["diagnosis"]["evidence"]["reason"] and len(calls) == 1
