"""File replay driver on the real recordings (WAV extensible, IMS ASCII, CWRU .mat) and fakes."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.io import wavfile

from edge_agent.drivers.base import Driver, DriverError
from edge_agent.drivers.replay import Config, ReplayDriver, create
from edge_agent.models.dsp.envelope import DEFECTS
from edge_agent.models.dsp.extract import VibrationConfig, make_extractor
from edge_agent.models.dsp.windowing import Windower
from edge_agent.records import Reading, ReadingBlock, WaveformBlock, parse_ts
from edge_agent.settings import ConfigError, parse
from tests.drivers.typed import sub

T0 = "2026-11-27T10:00:00Z"


def driver(**raw: object) -> ReplayDriver:
    cfg = parse(Config, {"kind": "replay", "name": "rp", "pace": "fast", "start_time": T0, **raw})
    d = create(cfg)
    assert isinstance(d, Driver)
    return d


async def drain(d: ReplayDriver, max_reads: int = 10_000
                ) -> list[Reading | ReadingBlock | WaveformBlock]:
    out: list[Reading | ReadingBlock | WaveformBlock] = []
    for _ in range(max_reads):
        if d.finished:
            break
        task = asyncio.ensure_future(d.read())
        while not task.done():
            await asyncio.wait({task}, timeout=0.05)
            if d.finished and not task.done():     # at the end read() waits for close
                await d.close()
        out += task.result()
    return out


def blocks(recs: list[Reading | ReadingBlock | WaveformBlock]) -> list[WaveformBlock]:
    return [r for r in recs if isinstance(r, WaveformBlock)]


async def test_mimii_wav_extensible_8_channels(data_dir: Path) -> None:
    path = data_dir / "mimii" / "fan_id_00" / "normal" / "00000000.wav"
    d = driver(path=str(path), block_size=5000)
    await d.open()
    recs = await drain(d)
    bl = blocks(recs)
    assert len(bl) == 32 and d.finished and d.health().snapshot()["finished"] is True
    _, ref = wavfile.read(path)
    got = np.concatenate([b.samples for b in bl])
    np.testing.assert_array_equal(got, ref / 32768.0)
    assert bl[0].channels == tuple(f"ch{i}" for i in range(8)) and bl[0].sample_rate == 16000.0
    for a, b in itertools.pairwise(bl):
        assert b.start == pytest.approx(a.end, abs=1e-9)
    assert bl[0].start == parse_ts(T0)


async def test_ims_folder_segments_and_column_selection(data_dir: Path) -> None:
    folder = data_dir / "ims_1st_test"
    d = driver(path=str(folder), format="ims", columns=["6", "7"], channels=["b4x", "b4y"],
               block_size=20480)
    await d.open()
    bl = blocks(await drain(d))
    files = sorted(folder.iterdir())
    assert len(bl) == len(files) == 10
    ref = np.loadtxt(files[3])
    np.testing.assert_array_equal(bl[3].samples, ref[:, 6:8])
    assert bl[3].channels == ("b4x", "b4y") and bl[3].sample_rate == 20000.0
    # one file per segment, 1 s (segment_gap) apart: windows never straddle two snapshots
    assert bl[1].start == pytest.approx(bl[0].end + 1.0)
    w = Windower(2048, 1024)
    n_windows = sum(len(w.push(b)) for b in bl)
    assert n_windows == 10 * 19 and w.resets["gap"] == 9


async def test_cwru_rpm_reading_feeds_the_envelope_extractor(data_dir: Path) -> None:
    path = data_dir / "cwru" / "48k_Drive_End_IR007_0_109.mat"
    d = driver(path=str(path), columns=["DE"], block_size=12000, source_id="motor.de")
    await d.open()
    recs = await drain(d)
    rpm = [r for r in recs if isinstance(r, Reading)]
    assert len(rpm) == 1 and rpm[0].sensor_id == "motor.de.rpm" and rpm[0].value == 1796.0
    bl = blocks(recs)
    assert bl[0].channels == ("de",) and bl[0].sample_rate == 48000.0
    ref = scipy.io.loadmat(path)["X109_DE_time"].ravel()
    np.testing.assert_array_equal(np.concatenate([b.samples[:, 0] for b in bl]), ref)
    cfg = parse(VibrationConfig, {"include": ["envelope"], "shaft_speed_tag": "motor.de.rpm",
                                  "bearing": {"n_balls": 9, "ball_diameter": 0.3126,
                                              "pitch_diameter": 1.537}})
    ex = make_extractor(cfg, 48000.0, ("de",), 32768, 16384)
    w = Windower(32768, 16384)
    windows = [x for b in bl for x in w.push(b)]
    e = ex.batch(windows, shaft_rpm=rpm[0].value)
    assert len(windows) == 13
    assert {DEFECTS[i] for i in np.argmax(e[:, :3], axis=1)} == {"bpfi"}


async def test_cwru_all_signals_and_loop(data_dir: Path) -> None:
    path = data_dir / "cwru" / "normal_0_97.mat"
    d = driver(path=str(path), loop=True, block_size=100_000, sample_rate=48000.0)
    await d.open()
    got = []
    for _ in range(8):
        got += await d.read()
    bl = blocks(got)
    assert bl[0].channels == ("de", "fe")
    n = 243938 if bl[0].samples.shape[0] else 0
    assert n and sum(b.n_samples for b in bl[:3]) == 243938       # 3 blocks per pass
    assert d.loops >= 2 and not d.finished
    assert bl[3].start == pytest.approx(bl[2].end + 1.0)             # a gap at each loop
    assert sum(isinstance(r, Reading) for r in got) == 3             # rpm once per pass
    await d.close()


async def test_realtime_pacing(tmp_path: Path) -> None:
    sr = 8000
    wavfile.write(tmp_path / "tone.wav", sr, (np.sin(np.arange(2400) / 5) * 1000).astype(np.int16))
    d = driver(path=str(tmp_path / "tone.wav"), pace="realtime", block_size=800)
    await d.open()
    t = time.monotonic()
    bl = blocks(await drain(d))
    elapsed = time.monotonic() - t
    assert len(bl) == 3
    assert 0.25 <= elapsed < 1.0        # 0.3 s of audio
    assert bl[0].samples.shape == (800, 1) and bl[0].samples.max() <= 1.0


async def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no files"):
        await driver(path=str(tmp_path / "nothing*.wav")).open()
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(DriverError, match=r"broken\.wav: cannot read as wav"):
        await driver(path=str(tmp_path / "broken.wav")).open()
    (tmp_path / "broken.mat").write_bytes(b"not a matlab file at all")
    with pytest.raises(DriverError, match="cannot read as cwru"):
        await driver(path=str(tmp_path / "broken.mat")).open()
    (tmp_path / "ims.txt").write_text("1\t2\n3\tx\n")
    with pytest.raises(DriverError, match="cannot read as ims"):
        await driver(path=str(tmp_path / "ims.txt")).open()
    wavfile.write(tmp_path / "ok.wav", 8000, np.zeros((100, 2), np.int16))
    with pytest.raises(DriverError, match="no column '5'"):
        await driver(path=str(tmp_path / "ok.wav"), columns=["5"]).open()
    with pytest.raises(ConfigError) as err:
        parse(Config, {"kind": "replay", "name": "x", "path": "p", "columns": ["0", "1"],
                       "channels": ["a"], "start_time": "yesterday", "pace": "slow"})
    text = str(err.value)
    assert "pace: must be one of" in text
    with pytest.raises(ConfigError) as err2:
        parse(Config, {"kind": "replay", "name": "x", "path": "p", "columns": ["0", "1"],
                       "channels": ["a"], "start_time": "yesterday"})
    text2 = str(err2.value)
    assert "channels: must name each selected column" in text2
    assert "start_time: is not an RFC 3339 time" in text2


async def test_bad_file_in_a_folder_is_skipped_and_reported(tmp_path: Path) -> None:
    wavfile.write(tmp_path / "a.wav", 8000, np.ones((1000, 1), np.int16))
    (tmp_path / "b.wav").write_bytes(b"garbage")
    wavfile.write(tmp_path / "c.wav", 8000, np.full((500, 1), 2, np.int16))
    d = driver(path=str(tmp_path), block_size=400)
    await d.open()
    bl = blocks(await drain(d))
    assert [b.n_samples for b in bl] == [400, 400, 200, 400, 100]
    snap = d.health().snapshot()
    assert snap["errors"] == {"bad_file": 1}
    assert any("b.wav" in k for k in sub(snap, "bad_points"))


async def test_corrupt_compressed_mat_and_empty_rpm_are_driver_errors(tmp_path: Path) -> None:
    sig = np.random.default_rng(0).normal(size=(5000, 1))
    scipy.io.savemat(tmp_path / "a_12k.mat", {"X097_DE_time": sig, "X097RPM": np.array([[1797.0]])},
                     do_compression=True)
    raw = bytearray((tmp_path / "a_12k.mat").read_bytes())
    for i in range(400, 450):
        raw[i] ^= 0x5A                                    # corrupt the deflate stream
    (tmp_path / "b_12k.mat").write_bytes(bytes(raw))
    with pytest.raises(DriverError, match=r"b_12k\.mat: cannot read as cwru"):
        await driver(path=str(tmp_path / "b_12k.mat")).open()
    # an empty *RPM entry: the signal is still replayed, without an rpm Reading
    scipy.io.savemat(tmp_path / "c_12k.mat",
                     {"X097_DE_time": sig[:1000], "X097RPM": np.zeros((0, 0))})
    d = driver(path=str(tmp_path), loop=False, block_size=4000)
    await d.open()
    got = await drain(d)
    assert [b.n_samples for b in blocks(got)] == [4000, 1000, 1000]
    assert sum(isinstance(r, Reading) for r in got) == 1           # only a_12k has an rpm
    snap = d.health().snapshot()
    assert snap["errors"] == {"bad_file": 1} and any("b_12k" in k for k in sub(snap, "bad_points"))


async def test_channels_without_columns_must_name_every_column(tmp_path: Path) -> None:
    wavfile.write(tmp_path / "two.wav", 8000, np.zeros((100, 2), np.int16))
    with pytest.raises(DriverError, match=r"1 channel name\(s\) \['a'\] for 2 column\(s\)"):
        await driver(path=str(tmp_path / "two.wav"), channels=["a"]).open()
    d = driver(path=str(tmp_path / "two.wav"), channels=["a", "b"])
    await d.open()
    assert blocks(await d.read())[0].channels == ("a", "b")


async def test_empty_recordings_are_unreadable(tmp_path: Path) -> None:
    wavfile.write(tmp_path / "empty.wav", 8000, np.zeros((0, 1), np.int16))
    d = driver(path=str(tmp_path), loop=True)
    with pytest.raises(DriverError, match=r"no readable file.*empty\.wav.*no samples"):
        await d.open()
    # next to a good file, the empty one is skipped and reported, looping still works
    wavfile.write(tmp_path / "good.wav", 8000, np.ones((300, 1), np.int16))
    d = driver(path=str(tmp_path), loop=True, block_size=200)
    await d.open()
    sizes = [b.n_samples for _ in range(6) for b in blocks(await d.read())]
    assert sizes == [200, 100] * 3 and d.loops == 2
    assert sub(d.health().snapshot(), "errors")["bad_file"] >= 1
    await d.close()
