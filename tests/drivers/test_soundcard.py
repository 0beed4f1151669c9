"""Sound-card driver logic with a fake PortAudio stream (no sound card on this machine).

What is tested here: the ring buffer, overrun and overflow accounting, timestamps, calibration,
stall detection and the error messages when sounddevice / PortAudio / the device is missing.
What is NOT tested: capture from real hardware.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge_agent.drivers.base import Driver, DriverDisconnected, DriverError
from edge_agent.drivers.soundcard import Channel, Config, SoundcardDriver, create, level_dbfs
from edge_agent.records import WaveformBlock
from edge_agent.settings import ConfigError, parse
from tests.drivers.typed import blocks, num

SR = 8000.0


class VirtualClock:
    """The wall clock as the driver sees it: advanced by the fake stream as audio is fed, so
    feeding 30 s of audio in a few ms looks like 30 s of real time (a real-time device)."""

    def __init__(self) -> None:
        import time
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


class FakeStream:
    """Calls the driver's callback from another thread, like PortAudio does."""

    clock: VirtualClock | None = None
    pace = 1.0                          # > 1: the device delivers faster than real time
    hang: threading.Event | None = None  # set: stop() blocks until it is (a hung device)

    def __init__(self, callback: Any, channels: int, blocksize: int, **kw: Any) -> None:
        self.callback, self.channels, self.blocksize, self.kw = callback, channels, blocksize, kw
        self.started = self.stopped = self.closed = False
        self.adc = 1000.0

    @property
    def time(self) -> float:
        return self.adc

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        if self.hang is not None:
            self.hang.wait(5)
            return
        self.stopped = True

    def close(self) -> None:
        self.closed = True

    def feed(self, data: np.ndarray, overflow: bool = False, adc: float | None = None) -> None:
        if adc is not None:
            self.adc = adc
        if self.clock is not None:               # the block arrives once it was captured
            self.clock.t += len(data) / SR / self.pace
        status = SimpleNamespace(input_overflow=overflow, __bool__=lambda: overflow)
        info = SimpleNamespace(inputBufferAdcTime=self.adc)
        t = threading.Thread(target=self.callback,
                             args=(data.astype(np.float32), len(data), info,
                                   status if overflow else None))
        t.start()
        t.join()
        self.adc += len(data) / SR


def make(channels: list[dict[str, Any]] | None = None, **raw: Any
         ) -> tuple[SoundcardDriver, list[FakeStream]]:
    cfg = parse(Config, {"kind": "soundcard", "name": "mic", "sample_rate": SR,
                         "block_size": 100, "buffer_seconds": 0.1,
                         "channels": channels or [{"name": "a"}, {"name": "b"}], **raw})
    made: list[FakeStream] = []
    clock = VirtualClock()

    def factory(**kw: Any) -> FakeStream:
        s = FakeStream(**kw)
        s.clock = clock
        made.append(s)
        return s
    d = SoundcardDriver(cfg, stream_factory=factory, clock=clock)
    assert isinstance(d, Driver)
    return d, made


def ramp(start: int, n: int, ch: int = 2) -> np.ndarray:
    v = np.arange(start, start + n, dtype=np.float64) / 10000.0
    return np.stack([v * (k + 1) for k in range(ch)], axis=1)


async def test_blocks_are_contiguous_and_exact() -> None:
    d, made = make()
    await d.open()
    s = made[0]
    assert s.started and s.kw["samplerate"] == SR and s.kw["dtype"] == "float32"
    s.feed(ramp(0, 100))
    s.feed(ramp(100, 100))
    b1 = (await blocks(d))[0]
    s.feed(ramp(200, 100))
    b2 = (await blocks(d))[0]
    assert b1.n_samples == 200 and b2.n_samples == 100
    np.testing.assert_allclose(np.concatenate([b1.samples, b2.samples]), ramp(0, 300),
                               rtol=1e-6)
    assert b2.start == pytest.approx(b1.end, abs=1e-9)
    assert b1.channels == ("a", "b") and b1.unit == "FS" and not b1.metadata
    await d.close()
    assert s.stopped and s.closed and not d.health().connected


async def test_ring_overrun_is_counted_and_leaves_a_time_gap() -> None:
    d, made = make()                                  # ring: 0.1 s = 800 frames
    await d.open()
    s = made[0]
    for k in range(10):                               # 1000 frames unread: 200 overwritten
        s.feed(ramp(k * 100, 100))
    b = (await blocks(d))[0]
    assert b.n_samples == 800 and b.metadata == {"gap_samples": 200}
    np.testing.assert_allclose(b.samples, ramp(200, 800), rtol=1e-6)   # the newest 800
    s.feed(ramp(1000, 100))
    b2 = (await blocks(d))[0]
    assert b2.start == pytest.approx(b.end, abs=1e-9)
    snap = d.health().snapshot()
    assert snap["overruns"] == 1 and snap["overrun_samples"] == 200
    assert snap["errors"] == {"ring_overrun": 1}
    # the gap is visible in time: the block starts 200 samples after the first capture
    first = d._anchors[0][1]
    assert b.start == pytest.approx(first + 200 / SR)


async def test_one_callback_larger_than_the_ring() -> None:
    d, made = make()
    await d.open()
    made[0].feed(ramp(0, 1000))
    b = (await blocks(d))[0]
    assert b.metadata == {"gap_samples": 200}
    np.testing.assert_allclose(b.samples, ramp(200, 800), rtol=1e-6)


async def test_input_overflow_reanchors_on_the_adc_clock() -> None:
    d, made = make()
    await d.open()
    s = made[0]
    s.feed(ramp(0, 100), adc=50.0)
    s.feed(ramp(100, 100))
    s.feed(ramp(500, 100), overflow=True, adc=50.0 + 500 / SR)   # 300 frames lost in PortAudio
    a = (await blocks(d))[0]
    b = (await blocks(d))[0]
    assert a.n_samples == 200 and not a.metadata
    assert b.metadata == {"input_overflow": True} and b.n_samples == 100
    assert b.start == pytest.approx(a.start + 500 / SR, abs=1e-9)     # the gap is in time
    assert d.health().snapshot()["input_overflows"] == 1


async def test_calibration_per_channel() -> None:
    chans = [
        {"name": "mic", "calibration": "mic_pa", "sensitivity": 50.0, "full_scale_volts": 1.0},
        {"name": "mic2", "calibration": "mic_pa", "sensitivity": 10.0, "full_scale_volts": 2.0,
         "gain_db": 20.0},
    ]
    d, made = make(chans)
    await d.open()
    made[0].feed(np.full((100, 2), 0.5))
    b = (await blocks(d))[0]
    assert b.unit == "Pa"
    # 0.5 FS * 1 V / 50 mV/Pa = 10 Pa; 0.5 FS * 2 V / 10 (20 dB) / 10 mV/Pa = 10 Pa
    np.testing.assert_allclose(b.samples[0], np.array([10.0, 10.0]))
    acc = Channel(name="x", calibration="iepe", sensitivity=100.0, full_scale_volts=5.0,
                  unit="m/s2")
    assert acc.scale_and_unit() == (pytest.approx(50.0 * 9.80665), "m/s2")
    assert Channel(name="x", calibration="iepe", sensitivity=100.0,
                   full_scale_volts=5.0).scale_and_unit() == (pytest.approx(50.0), "g")
    assert level_dbfs(np.sin(np.arange(8000) * 2 * math.pi / 80)) == pytest.approx(0.0,
                                                                                  abs=1e-9)
    assert level_dbfs(np.zeros(10)) == -math.inf


async def test_stall_is_a_disconnect() -> None:
    d, _ = make(stall_timeout=0.2)
    await d.open()
    with pytest.raises(DriverDisconnected, match="no audio"):
        await d.read()


async def test_read_waits_for_the_callback() -> None:
    d, made = make()
    await d.open()
    task = asyncio.ensure_future(blocks(d))
    await asyncio.sleep(0.05)
    assert not task.done()
    made[0].feed(ramp(0, 100))
    out = await asyncio.wait_for(task, 2.0)
    assert out[0].n_samples == 100


def test_config_problems() -> None:
    with pytest.raises(ConfigError) as err:
        parse(Config, {"kind": "soundcard", "name": "m", "channels": [
            {"name": "a", "calibration": "iepe"}, {"name": "a"}]})
    text = str(err.value)
    assert "sensitivity: is required" in text and "full_scale_volts: is required" in text
    with pytest.raises(ConfigError) as err2:
        parse(Config, {"kind": "soundcard", "name": "m", "channels": [
            {"name": "a", "calibration": "iepe", "sensitivity": 100.0, "full_scale_volts": 1.0},
            {"name": "a"}]})
    assert "names must be distinct" in str(err2.value) and "one unit" in str(err2.value)


async def test_missing_portaudio_or_package_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse(Config, {"kind": "soundcard", "name": "m", "channels": [{"name": "a"}]})
    try:
        import sounddevice  # noqa: F401
        have_portaudio = True
    except OSError:
        have_portaudio = False
    if not have_portaudio:              # this machine: the package is there, the library not
        with pytest.raises(DriverError, match="PortAudio library"):
            await create(cfg).open()
    monkeypatch.setitem(sys.modules, "sounddevice", None)       # package not installed
    with pytest.raises(DriverError, match="'sounddevice' package"):
        await create(cfg).open()


async def test_missing_device_lists_the_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    class PortAudioError(Exception):
        pass

    def check_input_settings(**kw: Any) -> None:
        raise ValueError(f"No input device matching {kw['device']!r}")

    fake_sd = SimpleNamespace(
        PortAudioError=PortAudioError, check_input_settings=check_input_settings,
        query_devices=lambda: [{"name": "USB Audio", "max_input_channels": 2},
                               {"name": "HDMI", "max_input_channels": 0}],
        InputStream=None)
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sd)
    cfg = parse(Config, {"kind": "soundcard", "name": "m", "device": "Focusrite",
                         "channels": [{"name": "a"}]})
    with pytest.raises(DriverError, match=r"'Focusrite'.*input devices: \['USB Audio'\]"):
        await create(cfg).open()


async def test_crystal_drift_is_slewed_toward_the_stream_clock() -> None:
    from edge_agent.models.dsp.windowing import Windower
    d, made = make(buffer_seconds=1.0)
    await d.open()
    s = made[0]
    # the card's crystal runs 1000 ppm slow: 100 frames take 100/SR * 1.001 s of stream clock
    got_blocks: list[WaveformBlock] = []
    for k in range(2400):                       # 30 s of audio
        s.feed(ramp(0, 100))
        s.adc += 100 / SR * 1e-3
        if k % 8 == 7:
            got_blocks += await blocks(d)
    adc_end = s.adc                             # stream-clock time of the next frame
    last = got_blocks[-1]
    t0 = got_blocks[0].start
    # without discipline the counter would be 30 ms behind; slewed, it stays within ~tolerance
    assert abs(last.end - (t0 + (adc_end - 1000.0))) < 0.0125
    snap = d.health().snapshot()
    assert num(snap, "clock_corrections") > 0 and abs(num(snap, "clock_error_s")) < 0.012
    # corrections are small steps: the windower sees one continuous stream
    w = Windower(400, 200)
    for b in got_blocks:
        w.push(b)
    assert not w.resets and w.windows > 1000
    steps = [b.start - a.end for a, b in itertools.pairwise(got_blocks)]
    assert max(abs(x) for x in steps) <= 0.0011
    await d.close()


async def test_no_drift_no_correction() -> None:
    d, made = make(buffer_seconds=1.0)
    await d.open()
    s = made[0]
    n = 0
    for k in range(400):
        s.feed(ramp(0, 100))
        if k % 40 == 39:
            n += sum(b.n_samples for b in await blocks(d))
    assert n == 40000 and d.health().snapshot()["clock_corrections"] == 0
    await d.close()


async def test_without_a_stream_clock_the_wall_clock_disciplines() -> None:
    d, made = make(buffer_seconds=1.0)
    await d.open()
    s = made[0]
    s.pace = 1.15                       # 0.5 s of audio delivered in 0.43 s of wall time
    for _ in range(40):
        s.feed(ramp(0, 100), adc=0.0)   # PortAudio gives no ADC time
    snap = d.health().snapshot()
    assert num(snap, "clock_corrections") > 0 and num(snap, "clock_error_s") > 0.05
    bl = [b for _ in range(50) if d._written > d._read for b in await blocks(d)]
    assert sum(b.n_samples for b in bl) == 4000                     # corrections lose nothing
    steps = [b.start - a.end for a, b in itertools.pairwise(bl)]
    assert all(-0.0011 <= x < 0 for x in steps)                     # slewed back, 1 ms a step
    await d.close()


async def test_a_device_faster_than_real_time_is_refused_not_stamped_in_the_future() -> None:
    d, made = make(buffer_seconds=10.0)
    await d.open()
    s = made[0]
    s.pace = 200.0                      # an unpaced device: 2 s of audio in 10 ms of wall time
    got: list[WaveformBlock] = []
    with pytest.raises(DriverError, match="faster than its nominal rate"):
        for k in range(160):
            s.feed(ramp(k * 100, 100))
            if k % 10 == 9:
                got += await blocks(d)
    wall = made[0].clock.t if made[0].clock else 0.0
    assert got and max(b.end for b in got) <= wall + 0.5     # never beyond the lead limit
    assert d.health().errors["too_fast"] == 1 and d.health().snapshot()["too_fast"] == 1
    await d.close()


async def test_non_finite_samples_become_a_counted_hole_never_nan(
        recwarn: pytest.WarningsRecorder) -> None:
    d, made = make(buffer_seconds=1.0)
    await d.open()
    s = made[0]
    s.feed(ramp(0, 100))
    bad = ramp(100, 100)
    bad[5, 1] = np.nan
    s.feed(bad)
    s.feed(ramp(200, 100))
    bl = [b for _ in range(3) if d._written > d._read for b in await blocks(d)]
    assert [b.n_samples for b in bl] == [100, 100]
    assert all(np.isfinite(b.samples).all() for b in bl)
    assert bl[1].start == pytest.approx(bl[0].end + 100 / SR)   # the hole shows
    snap = d.health().snapshot()
    assert snap["invalid_blocks"] == 1 and snap["invalid_frames"] == 100
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    await d.close()


async def test_close_is_bounded_when_the_device_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    import time as _time

    from edge_agent.drivers import soundcard
    monkeypatch.setattr(soundcard, "CLOSE_TIMEOUT_S", 0.2)
    d, made = make()
    await d.open()
    release = threading.Event()
    made[0].hang = release
    t = _time.monotonic()
    await d.close()
    assert _time.monotonic() - t < 1.0
    assert d.health().errors["close_timeout"] == 1 and not d.health().connected
    release.set()
