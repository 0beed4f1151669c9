"""Sample rates of recordings: stated by the config, a flag, the file or its name, else refused;
``models train --from-files --like BUNDLE`` on recordings."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from edge_agent.drivers.base import DriverError
from edge_agent.drivers.replay import Config, create
from edge_agent.models.builtin import BUNDLES, SPECS
from edge_agent.models.bundle import Bundle, load_bundle
from edge_agent.models.chain import names_contract
from edge_agent.models.cli import add_commands
from edge_agent.models.onnx_score import Scorer
from edge_agent.models.spec import spec_from_contract
from edge_agent.recordings import RateUnknown, read, read_recording
from edge_agent.records import WaveformBlock
from edge_agent.settings import parse


def cli(*argv: str) -> int:
    ap = argparse.ArgumentParser(prog="edge-agent")
    add_commands(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def numbered(data_dir: Path, tmp_path: Path) -> Path:
    """A shared CWRU file renamed by its CWRU number only: the name states no rate."""
    p = tmp_path / "105.mat"
    shutil.copyfile(data_dir / "cwru" / "48k_Drive_End_IR007_0_109.mat", p)
    return p


def test_a_file_named_by_number_is_refused_without_a_rate(
        numbered: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RateUnknown, match="sample_rate"):
        read(numbered)
    out = tmp_path / "m"
    assert cli("models", "train", "--from-files", str(numbered), "--spec", "vibration_cwru_de",
               "--out", str(out), "--name", "m") == 1
    err = capsys.readouterr().err
    assert "105.mat" in err and "--sample-rate" in err and not out.exists()
    # the flag supplies it
    assert cli("models", "train", "--from-files", str(numbered), "--sample-rate", "48000",
               "--spec", "vibration_cwru_de", "--out", str(out), "--name", "m",
               "--quantile", "0.995") == 0   # one 5 s file: fewer windows than a calibration


async def test_replay_needs_sample_rate_for_a_numbered_file(numbered: Path) -> None:
    raw = {"kind": "replay", "name": "rp", "pace": "fast", "path": str(numbered)}
    with pytest.raises(DriverError, match="sample_rate"):
        await create(parse(Config, raw)).open()
    d = create(parse(Config, {**raw, "sample_rate": 12000.0}))
    await d.open()
    blocks = [r for r in await d.read() if isinstance(r, WaveformBlock)]
    assert blocks[0].sample_rate == 12000.0
    await d.close()


def test_rate_from_the_file_metadata_or_the_name_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(0).normal(size=(4000, 1))
    scipy.io.savemat(tmp_path / "118.mat", {"X118_DE_time": x, "fs": np.array([[12000.0]])})
    assert read(tmp_path / "118.mat").sample_rate == 12000.0
    scipy.io.savemat(tmp_path / "B007_48k.mat", {"X118_DE_time": x})
    with caplog.at_level(logging.INFO, logger="edge_agent.recordings"):
        assert read(tmp_path / "B007_48k.mat").sample_rate == 48000.0
    assert any(r.getMessage() == "sample rate taken from the file name" for r in caplog.records)
    # "112k" or "48kg" state no rate
    for name in ("X112k.mat", "r48kg.mat"):
        scipy.io.savemat(tmp_path / name, {"X118_DE_time": x})
        with pytest.raises(RateUnknown):
            read(tmp_path / name)
    assert read_recording(tmp_path / "X112k.mat", sample_rate=6000.0)[1] == 6000.0


def test_train_like_a_bundle_from_recordings(data_dir: Path, tmp_path: Path) -> None:
    shipped = BUNDLES / "vibration_cwru_de"
    spec = spec_from_contract(Scorer.from_bundle(_bundle(shipped)).manifest.extractor)
    assert names_contract(spec) == names_contract(SPECS["vibration_cwru_de"])
    out = tmp_path / "like"
    assert cli("models", "train", "--from-files",
               str(data_dir / "cwru" / "48k_Drive_End_B007_0_122.mat"), "--like", str(shipped),
               "--out", str(out), "--name", "like", "--quantile", "0.995") == 0
    names, contract = names_contract(SPECS["vibration_cwru_de"])
    Scorer.load(out, expected_names=names, expected_contract=contract)
    # a sound bundle's contract rebuilds too
    snd = spec_from_contract(Scorer.from_bundle(_bundle(BUNDLES / "sound_mimii_fan"))
                             .manifest.extractor)
    assert names_contract(snd) == names_contract(SPECS["sound_mimii_fan"])


def _bundle(p: Path) -> Bundle:
    return load_bundle(p)


def test_wav_trains_on_the_core_install(data_dir: Path, tmp_path: Path) -> None:
    """MIMII clips are WAVE_FORMAT_EXTENSIBLE: scipy reads them; soundfile (the [audio] extra)
    is never imported on the WAV path, even for ``models train --from-files *.wav``."""
    import subprocess
    import sys

    clips = sorted((data_dir / "mimii" / "fan_id_00" / "normal").glob("*.wav"))[:2]
    assert clips[0].read_bytes()[20:22] == b"\xfe\xff"          # WAVE_FORMAT_EXTENSIBLE
    code = ("import sys; sys.modules['soundfile'] = None\n"     # import soundfile -> error
            "from edge_agent.agent.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "fan"
    r = subprocess.run([sys.executable, "-c", code, "models", "train", "--from-files",
                        *map(str, clips), "--like", str(BUNDLES / "sound_mimii_fan"),
                        "--channel", "0", "--out", str(out), "--name", "fan",
                        "--quantile", "0.995"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    names, contract = names_contract(SPECS["sound_mimii_fan"])
    Scorer.load(out, expected_names=names, expected_contract=contract)
