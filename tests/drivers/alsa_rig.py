"""Virtual sound cards for the real PortAudio/ALSA path, made by the tests (no hardware).

Each device is ALSA's ``file`` plugin reading its samples from a file (``infile``) over the
``null`` plugin, behind a ``plug`` that fixes the device's native format (S16_LE at the given
rate and channel count), so PortAudio opens it in float32 exactly as it would a USB sound card
and ALSA converts. The configuration lives in a test HOME (``~/.asoundrc``), never the user's.

Two kinds of device:

* **paced** — the infile is a FIFO fed by :class:`Feeder` at real time in whole periods: the
  plugin's read blocks until the next period is written, so the device delivers at its nominal
  rate, like a real converter (a partial period would be padded by the plugin, so the feeder
  always writes exactly ``period`` frames, one ``write`` each, ≤ PIPE_BUF bytes);
* **unpaced** — the infile is a regular file: everything comes back at once, the way the
  issue's raw-file device behaved (a device "faster than its nominal rate").

``sounddevice`` (PortAudio) reads the ALSA configuration when it is first imported, so
:func:`install` must run before that import in the process (the session fixture does it).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

PIPE_BUF = 4096


@dataclass(frozen=True)
class Device:
    name: str
    rate: int
    channels: int
    infile: Path
    paced: bool = True

    @property
    def raw(self) -> str:
        """The file plugin's own pcm (named apart, so a name substring matches one device)."""
        return "filesrc_" + self.name.rsplit("_", 1)[-1]

    def stanza(self) -> str:
        return f"""
pcm.{self.raw} {{
  type file
  slave.pcm "null"
  file "/dev/null"
  infile "{self.infile}"
  format "raw"
}}
pcm.{self.name} {{
  type plug
  slave {{ pcm "{self.raw}"; format S16_LE; rate {self.rate}; channels {self.channels} }}
  hint {{ show on description "edge-agent test device {self.name}" }}
}}
"""


_holders: dict[Path, int] = {}


def write_config(home: Path, devices: list[Device]) -> Path:
    """Write ``~/.asoundrc``. Each FIFO is held open read-write for the whole session: ALSA
    opens the infile when PortAudio probes or opens the device, and opening a FIFO for reading
    blocks until some writer has it open."""
    home.mkdir(parents=True, exist_ok=True)
    for d in devices:
        if d.paced and not d.infile.exists():
            os.mkfifo(d.infile)
        if d.paced and d.infile not in _holders:
            _holders[d.infile] = os.open(d.infile, os.O_RDWR)
    path = home / ".asoundrc"
    path.write_text("".join(d.stanza() for d in devices))
    return path


def unblock_all(seconds: float = 5.0) -> int:
    """Feed silence into every FIFO until no sound-card stream is left stuck in a stop.

    A stream stopped while its device delivered nothing (the end-of-input and gone-device
    tests) has its capture thread blocked reading the FIFO; the driver abandons that stop after
    its timeout, but PortAudio's teardown at interpreter exit would wait for the thread forever.
    Data in the FIFO lets the read — and so the stop — finish. Returns the streams still stuck.
    """
    from edge_agent.drivers import soundcard

    end = time.monotonic() + seconds
    while soundcard.abandoned_streams > 0 and time.monotonic() < end:
        for fd in _holders.values():
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(fd, False)
                os.write(fd, bytes(PIPE_BUF))
        time.sleep(0.05)
    return int(soundcard.abandoned_streams)


def to_s16(x: npt.ArrayLike) -> bytes:
    """Full-scale floats (frames x channels) to interleaved S16_LE bytes."""
    a = np.clip(np.asarray(x, dtype=np.float64), -1.0, 32767 / 32768)
    return np.round(a * 32768).astype("<i2").tobytes()


def tone(rate: int, seconds: float, amps: list[float], freq: float = 1000.0,
         start: int = 0) -> npt.NDArray[np.float64]:
    n = np.arange(start, start + int(rate * seconds))
    return np.stack([a * np.sin(2 * np.pi * freq * n / rate) for a in amps], axis=1)


class Feeder:
    """Writes a signal into a paced device's FIFO at real time, ``period`` frames per write.

    ``signal(k)`` returns the k-th period (frames x channels, full scale) or None at the end.
    Opened read-write, so the writer never blocks on open and never sees EPIPE while PortAudio
    probes or reopens the device."""

    def __init__(self, dev: Device, period: int, signal: object, speed: float = 1.0) -> None:
        assert dev.paced
        assert period * dev.channels * 2 <= PIPE_BUF, "a period must fit one atomic pipe write"
        self.dev, self.period, self.signal, self.speed = dev, period, signal, speed
        self.fd = os.open(dev.infile, os.O_RDWR | os.O_NONBLOCK)
        os.set_blocking(self.fd, True)
        self._run = threading.Event()
        self._run.set()
        self._stop = threading.Event()
        self.periods = 0
        self.t_start: float | None = None
        self._thread = threading.Thread(target=self._loop, name=f"feeder:{dev.name}",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        t0 = time.monotonic()
        k = 0
        dt = self.period / self.dev.rate / self.speed
        while not self._stop.is_set():
            if not self._run.is_set():
                self._run.wait(0.05)
                t0, k = time.monotonic(), 0
                continue
            block = self.signal(self.periods)  # type: ignore[operator]
            if block is None:
                return
            if self.t_start is None:
                self.t_start = time.time()
            os.write(self.fd, to_s16(block))
            self.periods += 1
            k += 1
            time.sleep(max(0.0, t0 + k * dt - time.monotonic()))

    def pause(self) -> None:
        self._run.clear()

    def resume(self) -> None:
        self._run.set()

    def close(self) -> None:
        self._stop.set()
        self._run.set()
        self._thread.join(5)
        os.close(self.fd)


def looped(x: npt.NDArray[np.float64], period: int) -> object:
    """A signal function that loops ``x`` (frames x channels) period by period."""
    n = x.shape[0]

    def sig(k: int) -> npt.NDArray[np.float64]:
        idx = (np.arange(k * period, (k + 1) * period)) % n
        return x[idx]
    return sig
