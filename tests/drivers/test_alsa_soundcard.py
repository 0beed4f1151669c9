"""The sound-card driver through the real PortAudio/ALSA path (libportaudio2 + sounddevice).

Virtual capture devices (tests/drivers/alsa_rig.py) stand in for sound cards: ALSA's file
plugin fed through a FIFO at real time (paced) or from a regular file (unpaced). Everything
between — PortAudio's device list, stream, callback thread, block timing, ALSA's format and
channel conversion — is the real thing. `make test` installs libportaudio2 when missing; a
missing library fails these tests, it is never skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.drivers.base import DriverDisconnected, DriverError
from edge_agent.drivers.soundcard import Config, SoundcardDriver, level_dbfs
from edge_agent.records import WaveformBlock
from edge_agent.settings import parse as build
from tests.drivers.alsa_rig import (
    Device,
    Feeder,
    looped,
    to_s16,
    tone,
    unblock_all,
    write_config,
)
from tests.drivers.typed import blocks, num, sub

PERIOD = 1024          # frames per PortAudio block = per FIFO write (stereo: 4096 bytes)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Device]]:
    if "sounddevice" in sys.modules:
        pytest.fail("sounddevice was imported before the test ALSA configuration was written")
    home = tmp_path_factory.mktemp("alsa-home")
    devs = {
        "mic": Device("edgetest_mic", 16000, 1, home / "mic.fifo"),
        "accel": Device("edgetest_accel", 48000, 2, home / "accel.fifo"),
        "gone": Device("edgetest_gone", 16000, 1, home / "gone.fifo"),
        "fast": Device("edgetest_fast", 16000, 1, home / "fast.raw", paced=False),
    }
    devs["fast"].infile.write_bytes(to_s16(tone(16000, 30.0, [0.5])))
    write_config(home, list(devs.values()))
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        import sounddevice  # noqa: F401 - PortAudio reads ~/.asoundrc now
    except OSError as exc:
        pytest.fail(f"PortAudio is missing (apt-get install libportaudio2): {exc}")
    yield devs
    # streams whose stop was abandoned (a silent device) must finish before the interpreter
    # exits: PortAudio's teardown would wait for them forever
    assert unblock_all() == 0, "a sound-card stream is still stuck in its stop"
    if old is not None:
        os.environ["HOME"] = old


def driver(device: str, rate: float, channels: list[dict[str, Any]], **raw: Any
           ) -> SoundcardDriver:
    cfg = build(Config, {"kind": "soundcard", "name": "card", "device": device,
                         "sample_rate": rate, "block_size": PERIOD, "channels": channels,
                         **raw})
    return SoundcardDriver(cfg)


async def capture(d: SoundcardDriver, seconds: float) -> list[WaveformBlock]:
    got: list[WaveformBlock] = []
    n = 0
    while n < seconds * d.cfg.sample_rate:
        for b in await blocks(d):
            got.append(b)
            n += b.n_samples
    return got


def joined(blocks: list[Any], skip_s: float = 0.2) -> np.ndarray:
    x = np.concatenate([b.samples for b in blocks])
    return x[int(skip_s * blocks[0].sample_rate):]


def device_index(name: str) -> int:
    import sounddevice as sd
    for i, dev in enumerate(sd.query_devices()):
        if dev["name"] == name and dev["max_input_channels"] > 0:
            return i
    raise AssertionError(f"{name} not listed by PortAudio: {sd.query_devices()}")


@pytest.mark.parametrize("how", ["substring", "index"])
async def test_device_by_name_substring_and_by_index_dbfs(rig: dict[str, Device],
                                                          how: str) -> None:
    dev = rig["mic"]
    feeder = Feeder(dev, PERIOD, looped(tone(16000, 1.0, [0.25]), PERIOD))
    sel = "test_mic" if how == "substring" else str(device_index(dev.name))
    d = driver(sel, 16000, [{"name": "mic", "calibration": "dbfs"}])
    try:
        await d.open()
        blocks = await capture(d, 1.0)
    finally:
        await d.close()
        feeder.close()
    x = joined(blocks)[:, 0]
    assert abs(level_dbfs(x) - 20 * math.log10(0.25)) < 0.1          # -12.04 dBFS
    assert blocks[0].unit == "FS" and blocks[0].sample_rate == 16000


async def test_microphone_16k_calibrated_to_pascal(rig: dict[str, Device]) -> None:
    dev = rig["mic"]
    amp = 0.1                                   # full-scale fraction
    feeder = Feeder(dev, PERIOD, looped(tone(16000, 1.0, [amp]), PERIOD))
    # 50 mV/Pa microphone, interface 1.0 V at 0 dBFS with 6 dB preamp gain
    d = driver("edgetest_mic", 16000, [{"name": "mic", "calibration": "mic_pa",
                                        "sensitivity": 50.0, "full_scale_volts": 1.0,
                                        "gain_db": 6.0}])
    try:
        await d.open()
        blocks = await capture(d, 1.0)
    finally:
        await d.close()
        feeder.close()
    x = joined(blocks)[:, 0]
    peak_pa = amp * 1.0 / 10 ** (6 / 20) / 0.050
    rms = float(np.sqrt(np.mean(x * x)))
    assert blocks[0].unit == "Pa"
    assert abs(20 * math.log10(rms / (peak_pa / math.sqrt(2)))) < 0.1


async def test_accelerometer_48k_two_channels_interleaved_in_g(rig: dict[str, Device]) -> None:
    dev = rig["accel"]
    amps = [0.2, 0.05]                           # different per channel: interleaving shows
    feeder = Feeder(dev, PERIOD, looped(tone(48000, 1.0, amps, freq=160.0), PERIOD))
    ch = [{"name": n, "calibration": "iepe", "sensitivity": 100.0, "full_scale_volts": 5.0}
          for n in ("h", "v")]
    d = driver("edgetest_accel", 48000, ch)
    try:
        await d.open()
        blocks = await capture(d, 1.0)
    finally:
        await d.close()
        feeder.close()
    x = joined(blocks)
    assert x.shape[1] == 2 and blocks[0].channels == ("h", "v") and blocks[0].unit == "g"
    for k, a in enumerate(amps):
        rms_g = float(np.sqrt(np.mean(x[:, k] ** 2)))
        want = a * 5.0 / 0.100 / math.sqrt(2)     # 100 mV/g, 5 V full scale
        assert abs(20 * math.log10(rms_g / want)) < 0.1, (k, rms_g, want)


async def test_timestamps_continuous_and_on_the_wall_clock(rig: dict[str, Device]) -> None:
    """A few seconds here; minutes, against the feeder's clock and with a device off its
    nominal rate, in tests/test_timestamps_soundcard.py (captured in the background)."""
    dev = rig["mic"]
    feeder = Feeder(dev, PERIOD, looped(tone(16000, 1.0, [0.3]), PERIOD))
    d = driver("edgetest_mic", 16000, [{"name": "mic"}])
    try:
        await d.open()
        blocks = await capture(d, 3.0)
        import time
        now = time.time()
    finally:
        await d.close()
        feeder.close()
    steps = [b.start - a.end for a, b in itertools.pairwise(blocks)]
    assert max(abs(s) for s in steps) <= 0.0011, "blocks must be contiguous (1 ms slews)"
    # the last sample was captured just before we read it: never in the future, never stale
    assert -0.5 < blocks[-1].end - now <= 0.05
    assert d.health().snapshot()["too_fast"] == 0


async def test_overrun_from_a_stalled_consumer_is_counted(rig: dict[str, Device]) -> None:
    dev = rig["mic"]
    feeder = Feeder(dev, PERIOD, looped(tone(16000, 1.0, [0.3]), PERIOD))
    d = driver("edgetest_mic", 16000, [{"name": "mic"}], buffer_seconds=0.3)
    try:
        await d.open()
        await capture(d, 0.2)
        await asyncio.sleep(1.0)                # the consumer stalls: the 0.3 s ring laps
        late = await blocks(d)
    finally:
        await d.close()
        feeder.close()
    assert late[0].metadata.get("gap_samples", 0) > 0
    snap = d.health().snapshot()
    assert num(snap, "overruns") >= 1 and sub(snap, "errors")["ring_overrun"] >= 1


async def test_end_of_input_is_detected_and_the_device_reopened(rig: dict[str, Device]) -> None:
    dev = rig["mic"]
    feeder = Feeder(dev, PERIOD, looped(tone(16000, 1.0, [0.3]), PERIOD))
    d = driver("edgetest_mic", 16000, [{"name": "mic"}], stall_timeout=1.0)
    try:
        await d.open()
        await capture(d, 0.3)
        feeder.pause()                          # the device stops delivering
        with pytest.raises(DriverDisconnected, match=r"no audio for 1\.0 s"):
            for _ in range(100):
                await d.read()
        await d.close()                         # bounded even while ALSA waits for data
        feeder.resume()
        await d.open()
        again = await capture(d, 0.5)
    finally:
        await d.close()
        feeder.close()
    assert sum(b.n_samples for b in again) >= 8000


async def test_a_device_that_disappears_gives_a_clear_error(rig: dict[str, Device]) -> None:
    """Removed from ALSA's configuration while the agent runs: the next open is refused with
    the devices that do exist (ALSA re-read its files), or — when the process still holds the
    old configuration — the stream delivers nothing and the stall is reported; never silence
    passed off as audio."""
    home = Path(os.environ["HOME"])
    dev = rig["gone"]
    feeder = Feeder(dev, PERIOD, looped(tone(16000, 1.0, [0.3]), PERIOD))
    d = driver("edgetest_gone", 16000, [{"name": "mic"}], stall_timeout=1.0)
    try:
        await d.open()
        await capture(d, 0.2)
        await d.close()
        feeder.close()                          # unplugged: nothing feeds it any more
        write_config(home, [v for k, v in rig.items() if k != "gone"])
        with pytest.raises((DriverError, DriverDisconnected)) as err:
            await d.open()
            for _ in range(100):
                await d.read()
    finally:
        await d.close()
        write_config(home, list(rig.values()))
    text = str(err.value)
    assert ("edgetest_mic" in text and "edgetest_gone" in text) or "no audio for 1.0 s" in text


async def test_a_device_that_is_not_there_names_those_that_are(rig: dict[str, Device]) -> None:
    d = driver("edgetest_absent", 16000, [{"name": "mic"}])
    with pytest.raises(DriverError) as err:
        await d.open()
    assert "edgetest_absent" in str(err.value) and "edgetest_mic" in str(err.value)


async def test_a_device_faster_than_real_time_is_refused(rig: dict[str, Device]) -> None:
    import time
    d = driver("edgetest_fast", 16000, [{"name": "mic"}])
    got: list[Any] = []
    try:
        await d.open()
        with pytest.raises(DriverError, match="faster than its nominal rate"):
            for _ in range(200):
                got += await d.read()
    finally:
        await d.close()
    now = time.time()
    assert all(b.end <= now + 0.6 for b in got), "no sample stamped in the future"
    assert all(np.isfinite(b.samples).all() for b in got)
    assert d.health().errors["too_fast"] == 1
