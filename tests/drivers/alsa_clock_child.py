"""The minutes-long sound-card capture behind tests/test_timestamps_soundcard.py, run as a child
process of the test session (tests/drivers/alsa_clock.py starts it early and the test checks
its output late, so its minutes overlap the rest of the suite).

    python -m tests.drivers.alsa_clock_child OUT_DIR SECONDS

Two virtual ALSA microphones (tests/drivers/alsa_rig.py, 16 kHz mono, 1024-frame periods) are
captured for SECONDS through the real path — PortAudio's ALSA host API and the real
:class:`~edge_agent.drivers.soundcard.SoundcardDriver` — at once:

* ``nominal``: fed at exactly 16000 frames per second of the feeder's clock;
* ``fast``: fed ``FAST_PPM`` faster, a converter whose crystal is off (the driver must follow
  the stream clock, not count samples at the nominal rate).

The signal is a ramp (sample n carries the S16 code ``n mod 65536``), so the checker can tell
that every sample arrived once and in order. Written to OUT_DIR: ``<device>.npz`` (each block's
start time, length and first code; the feeder's log of frames written and when) and
``result.json`` (health snapshots, input latency). The process limits itself (an alarm, and it
dies with its parent) and leaves with ``os._exit`` once the results are on disk: a stream stop
blocked in the FIFO read must never keep it alive.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.drivers.alsa_rig import Device, Feeder, unblock_all, write_config

RATE = 16000
PERIOD = 1024
FAST_PPM = 500.0
PR_SET_PDEATHSIG = 1


def ramp(k: int) -> npt.NDArray[np.float64]:
    n = np.arange(k * PERIOD, (k + 1) * PERIOD)
    return (((n + 32768) % 65536) - 32768)[:, None] / 32768.0


def codes(x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    c: npt.NDArray[np.int64] = np.round(x * 32768).astype(np.int64) % 65536
    return c


async def capture(dev: Device, speed: float, seconds: float, out: Path) -> dict[str, Any]:
    from edge_agent.drivers.soundcard import Config, SoundcardDriver
    from edge_agent.settings import parse

    d = SoundcardDriver(parse(Config, {"kind": "soundcard", "name": dev.name,
                                       "device": dev.name, "sample_rate": float(RATE),
                                       "block_size": PERIOD, "channels": [{"name": "x"}]}))
    await d.open()
    feeder = Feeder(dev, PERIOD, ramp, speed=speed)
    starts: list[float] = []
    counts: list[int] = []
    firsts: list[int] = []
    inside = True                                  # every block's samples consecutive
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for b in await d.read():
                c = codes(b.samples[:, 0])         # type: ignore[union-attr]
                starts.append(b.start)             # type: ignore[union-attr]
                counts.append(len(c))
                firsts.append(int(c[0]))
                inside = inside and bool(np.all(np.diff(c) % 65536 == 1))
    finally:
        await d.close()                            # the feeder still runs: the stop is prompt
        feeder.close()
    log = np.array(feeder.log, dtype=np.float64)
    np.savez(out / f"{dev.name}.npz", starts=np.array(starts), counts=np.array(counts),
             firsts=np.array(firsts), fed_frames=log[:, 0], fed_at=log[:, 1])
    return {"speed": speed, "inside_contiguous": inside, "latency_s": d._in_latency,
            "health": d.health().snapshot()}


async def run(home: Path, out: Path, seconds: float) -> dict[str, Any]:
    nominal = Device("edgeclk_nominal", RATE, 1, home / "nominal.fifo")
    fast = Device("edgeclk_fast", RATE, 1, home / "fast.fifo")
    write_config(home, [nominal, fast])
    os.environ["HOME"] = str(home)
    import sounddevice  # noqa: F401 - PortAudio reads ~/.asoundrc now
    got = await asyncio.gather(capture(nominal, 1.0, seconds, out),
                               capture(fast, 1.0 + FAST_PPM * 1e-6, seconds, out))
    return {"nominal": got[0], "fast": got[1], "seconds": seconds, "rate": RATE}


def main() -> None:
    out, seconds = Path(sys.argv[1]), float(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)   # the test session died: so do we
    signal.alarm(int(seconds) + 60)                # and never outlive our own budget
    result = asyncio.run(run(out / "home", out, seconds))
    (out / "result.json").write_text(json.dumps(result, default=str))
    unblock_all()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
