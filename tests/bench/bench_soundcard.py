"""Sound-card capture through the real PortAudio/ALSA path: CPU per channel at 48 kHz, latency
from a sample's capture to its feature vector, and overruns when both cores are busy.

The device is a virtual ALSA capture device (tests/drivers/alsa_rig.py) fed at real time by a
child process, so the feeder's CPU is not counted. Prints figures; not a timed test.

    .venv/bin/python tests/bench/bench_soundcard.py
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import cpu_s

from edge_agent.records import WaveformBlock
from tests.drivers.alsa_rig import Device, Feeder, looped, tone, write_config
from tests.drivers.typed import num

PERIOD = 1024
SECONDS = 10.0


def feed(dev: Device, seconds: float) -> None:
    f = Feeder(dev, PERIOD, looped(tone(dev.rate, 1.0, [0.3] * dev.channels, 160.0), PERIOD))
    time.sleep(seconds)
    f.close()


def hog(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


async def capture(dev: Device, seconds: float, analyse: bool, ring_s: float = 4.0
                  ) -> dict[str, float]:
    """Open the device first, then start feeding it (audio fed before the stream is open
    would pile up in the FIFO and arrive faster than real time — refused, as it should be)."""
    from edge_agent.agent.config import PipelineConfig
    from edge_agent.drivers.soundcard import Config, SoundcardDriver
    from edge_agent.models.chain import Chain
    from edge_agent.settings import parse

    cfg = parse(Config, {"kind": "soundcard", "name": "acc", "device": dev.name,
                         "sample_rate": float(dev.rate), "block_size": PERIOD,
                         "buffer_seconds": ring_s,
                         "channels": [{"name": f"c{i}", "calibration": "iepe",
                                       "sensitivity": 100.0, "full_scale_volts": 5.0}
                                      for i in range(dev.channels)]})
    chain = Chain(parse(PipelineConfig, {"source": "acc", "window": 2048, "hop": 1024,
                                          "features": {"kind": "vibration"}}), Path("."))
    d = SoundcardDriver(cfg)
    await d.open()
    feeder = mp.get_context("fork").Process(target=feed, args=(dev, seconds + 2))
    feeder.start()
    lat: list[float] = []
    c0, t0 = cpu_s(), time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            for b in await d.read():
                if analyse:
                    assert isinstance(b, WaveformBlock), b
                    vectors, _ = chain.process(b)
                    now = time.time()
                    lat += [now - v.window_end for v in vectors]
    finally:
        cpu = cpu_s() - c0
        wall = time.monotonic() - t0
        await d.close()
        feeder.join()
    snap = d.health().snapshot()
    out = {"cpu_per_s": cpu / wall, "overruns": num(snap, "overruns"),
           "overrun_samples": num(snap, "overrun_samples"),
           "input_overflows": num(snap, "input_overflows")}
    if lat:
        out["lat_p50_ms"] = float(np.percentile(lat, 50) * 1e3)
        out["lat_p99_ms"] = float(np.percentile(lat, 99) * 1e3)
    return out


def main() -> None:
    home = Path(tempfile.mkdtemp())
    devs = [Device("benchcard_mono", 48000, 1, home / "m.fifo"),
            Device("benchcard_stereo", 48000, 2, home / "s.fifo")]
    write_config(home, devs)
    os.environ["HOME"] = str(home)
    import sounddevice  # noqa: F401 - after the ALSA configuration exists
    ctx = mp.get_context("fork")
    print(f"sound card, 48 kHz, {PERIOD}-frame blocks, {SECONDS:.0f} s each "
          f"(virtual ALSA device fed at real time by a child process)")
    per_ch = {}
    for dev in devs:
        r = asyncio.run(capture(dev, SECONDS, analyse=False))
        per_ch[dev.channels] = r["cpu_per_s"]
        print(f"  capture only, {dev.channels} ch: {r['cpu_per_s'] * 100:.2f} % of a core "
              f"({r['cpu_per_s'] * 100 / dev.channels:.2f} % per channel)")
    print(f"  marginal cost of the second channel: {(per_ch[2] - per_ch[1]) * 100:.2f} % of a core")
    dev = devs[1]
    r = asyncio.run(capture(dev, SECONDS, analyse=True))
    print(f"  capture + vibration features (2048/1024), 2 ch: {r['cpu_per_s'] * 100:.2f} % of a "
          f"core; capture → feature vector latency p50 {r['lat_p50_ms']:.1f} ms, "
          f"p99 {r['lat_p99_ms']:.1f} ms (one hop is {1024 / 48:.1f} ms)")
    hogs = [ctx.Process(target=hog, args=(SECONDS + 3,)) for _ in range(2)]
    for h in hogs:
        h.start()
    r = asyncio.run(capture(dev, SECONDS, analyse=True, ring_s=0.1))
    for h in hogs:
        h.join()
    print(f"  both cores saturated by 2 busy processes, 0.1 s ring: overruns "
          f"{r['overruns']:.0f} ({r['overrun_samples']:.0f} samples, counted and reported), "
          f"PortAudio input overflows {r['input_overflows']:.0f}; latency p99 "
          f"{r.get('lat_p99_ms', float('nan')):.1f} ms")


if __name__ == "__main__":
    main()
