"""``edge-agent models export | train | verify | pack`` through argparse, on real files."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from edge_agent.models.builtin import BUNDLES, SPECS
from edge_agent.models.bundle import load_bundle
from edge_agent.models.chain import features_of, names_contract
from edge_agent.models.cli import add_commands
from edge_agent.models.onnx_score import Scorer
from edge_agent.records import FeatureVector, format_ts

from .conftest import CONTRACT, NAMES


def cli(*argv: str) -> int:
    ap = argparse.ArgumentParser(prog="edge-agent")
    add_commands(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(list(argv))
    return int(args.func(args))


def test_export_verify_pack(pipeline: Any, X_train: np.ndarray, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    joblib.dump(pipeline, tmp_path / "p.joblib")
    np.savetxt(tmp_path / "f.csv", X_train, delimiter=",", header=",".join(NAMES), comments="")
    (tmp_path / "c.json").write_text(json.dumps({**CONTRACT, "features": list(NAMES)}))
    out = tmp_path / "b"
    assert cli("models", "export", str(tmp_path / "p.joblib"), "--features",
               str(tmp_path / "f.csv"), "--contract", str(tmp_path / "c.json"), "--out",
               str(out), "--name", "cli_vib", "--version", "3") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["name"] == "cli_vib" and summary["verified_max_abs_diff"] <= 1e-5
    sc = Scorer.load(out, expected_names=NAMES, expected_contract={**CONTRACT,
                                                                   "features": list(NAMES)})
    assert sc.manifest.source["kind"] == "file"
    assert cli("models", "verify", str(out), "--contract", str(tmp_path / "c.json")) == 0
    (tmp_path / "c2.json").write_text(json.dumps({**CONTRACT, "hop": 512}))
    capsys.readouterr()
    assert cli("models", "verify", str(out), "--contract", str(tmp_path / "c2.json")) == 1
    assert "'hop'" in capsys.readouterr().err
    assert cli("models", "pack", str(out), str(tmp_path / "b.zip")) == 0
    assert load_bundle(tmp_path / "b.zip").manifest.name == "cli_vib"
    (out / "model.onnx").write_bytes(b"broken")
    assert cli("models", "verify", str(out)) == 1
    assert "sha256" in capsys.readouterr().err


def test_export_refuses_unsupported(X_train: np.ndarray, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.decomposition import PCA

    joblib.dump(PCA(2).fit(X_train), tmp_path / "pca.pkl")
    np.savez(tmp_path / "f.npz", X=X_train, names=np.array(NAMES))
    (tmp_path / "c.json").write_text(json.dumps(CONTRACT))
    assert cli("models", "export", str(tmp_path / "pca.pkl"), "--features",
               str(tmp_path / "f.npz"), "--contract", str(tmp_path / "c.json"), "--out",
               str(tmp_path / "x"), "--name", "x") == 1
    assert "cannot export PCA" in capsys.readouterr().err


def test_train_from_recordings(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "site.tar.gz"
    assert cli("models", "train", "--from-files", str(data_dir / "cwru" / "normal_0_97.mat"),
               "--sample-rate", "48000",
               "--spec", "vibration_cwru_de", "--out", str(out), "--name", "site",
               "--quantile", "0.99") == 0
    names, contract = names_contract(SPECS["vibration_cwru_de"])
    sc = Scorer.load(out, expected_names=names, expected_contract=contract)
    assert sc.manifest.source["files"] == ["normal_0_97.mat"]
    # Same contract as the shipped CWRU bundle: verify --like accepts it.
    assert cli("models", "verify", str(out), "--like",
               str(BUNDLES / "vibration_cwru_de")) == 0


async def test_train_from_buffer(tmp_path: Path) -> None:
    from edge_agent.sync.buffer import Buffer, BufferConfig
    from tests.tools.train_defaults import simulator_features

    spec = SPECS["vibration_simulator"]
    names, contract = names_contract(spec)
    Xv, _, _, _ = simulator_features(20.0, fault="none", seed=3)
    t0 = float(int(time.time()) - 3600)  # within the buffer's max_age
    fvs = [FeatureVector("pump-01.de_accel", t0 + i * 0.05, t0 + i * 0.05 + 0.1,
                         dict(zip(names, map(float, row), strict=True)))
           for i, row in enumerate(Xv)]
    fvs.append(FeatureVector("other", t0 + 1, t0 + 1.1, {"x": 1.0}))
    buf = Buffer(tmp_path / "buffer.db", BufferConfig())
    await buf.start()
    await buf.put(fvs)
    await buf.close()
    out = tmp_path / "from_buffer"
    since, until = format_ts(t0 + 2.0), format_ts(t0 + 15.0)
    assert cli("models", "train", "--source", "pump-01.de_accel", "--db",
               str(tmp_path / "buffer.db"), "--since", since, "--until", until,
               "--like", str(BUNDLES / "vibration_simulator"), "--out", str(out),
               "--name", "pump_baseline") == 0
    sc = Scorer.load(out, expected_names=names, expected_contract=contract)
    assert sc.manifest.n_training_rows > 0
    assert sc.manifest.source["since"] == since
    expected_rows = sum(1 for f in fvs[:-1] if t0 + 2.0 <= f.window_start <= t0 + 15.0)
    assert sc.manifest.source["rows"] == expected_rows
    assert np.isfinite(sc.score(features_of(spec, np.zeros((4096, 2)) + 0.01))).all()


def test_cwru_sample_rate_from_file_name(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import scipy.io

    from edge_agent.recordings import read_recording

    x = np.random.default_rng(0).normal(size=(12000 * 4, 1))
    for name, rate in (("12k_Drive_End_B007_0_118.mat", 12000.0),
                       ("B007_12K_0.mat", 12000.0), ("48k_Drive_End_B007_0_122.mat", 48000.0)):
        scipy.io.savemat(tmp_path / name, {"X118_DE_time": x})
        got, sr = read_recording(tmp_path / name)
        assert sr == rate and got.shape == x.shape, name
    # a 12 kHz recording is not trained as if it were 48 kHz (the CWRU spec is 48 kHz)
    out = tmp_path / "m"
    assert cli("models", "train", "--from-files", str(tmp_path / "12k_Drive_End_B007_0_118.mat"),
               "--spec", "vibration_cwru_de", "--out", str(out), "--name", "m") != 0
    assert "12000.0 Hz" in capsys.readouterr().err and not out.exists()
