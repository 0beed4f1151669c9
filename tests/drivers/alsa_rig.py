"""Virtual sound cards for the real PortAudio/ALSA path, made by the tests (no hardware).

Each device is ALSA's ``file`` plugin reading its samples from a file (``infile``) over the
``null`` plugin, behind a ``plug`` that fixes the device's native format (S16_LE at the given
rate and channel count), so PortAudio opens it in float32 exactly as it would a USB sound card
and ALSA converts. The configuration lives in a test HOME (``~/.asoundrc``), never the user's.

Two kinds of device:

* **paced** — the infile is a FIFO fed by :class:`Feeder` at real time in whole periods: the
  plugin's read blocks until the next period is written, so the device delivers at its nominal
  rate, like a real converter (see :class:`Feeder` for how the writes must match the plugin's
  reads, or the device inserts junk or drops a period);
* **unpaced** — the infile is a regular file: everything comes back at once, the way the
  issue's raw-file device behaved (a device "faster than its nominal rate").

``sounddevice`` (PortAudio) reads the ALSA configuration when it is first imported, so
:func:`install` must run before that import in the process (the session fixture does it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios
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


def queued(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


class Feeder:
    """Writes a signal into a paced device's FIFO at real time, ``period`` frames per write.

    ``signal(k)`` returns the k-th period (frames x channels, full scale) or None at the end.
    Opened read-write, so the writer never blocks on open and never sees EPIPE while PortAudio
    probes or reopens the device.

    The writes follow how ALSA's file plugin reads its infile in mmap mode (the mode PortAudio
    uses; alsa-lib 1.2.8 ``snd_pcm_file_mmap_begin``): one ``read()`` per mmap cycle for the
    whole contiguous area on offer, and a short read leaves the rest of that area as it was
    (zeros or stale memory) while the caller still commits it. PortAudio's first cycle on a
    started stream takes two periods (strace: a 2-period read, then alternately 2-period reads
    at the buffer's start and 1-period reads at its middle), so:

    * the first write after a start or a resume carries ``PRIME`` periods at once (fed one
      period at a time, the first cycle read one period and passed one period of junk on as
      audio, shifting everything after it by a period);
    * a period is written only once the pipe is empty: with two periods waiting, a 2-period
      read can take both while PortAudio commits one, and the next read overwrites the other
      (a period lost). A feeder running late catches up one period at a time, as fast as the
      device reads.

    ``log`` holds ``(frames written so far, time.time() just after the write)`` per write: the
    feeder's real-time clock for the device's samples."""

    PRIME = 2

    def __init__(self, dev: Device, period: int, signal: object, speed: float = 1.0) -> None:
        assert dev.paced
        assert period * dev.channels * 2 * self.PRIME <= 1 << 16, "the first write fits a pipe"
        self.dev, self.period, self.signal, self.speed = dev, period, signal, speed
        self.fd = os.open(dev.infile, os.O_RDWR | os.O_NONBLOCK)
        os.set_blocking(self.fd, True)
        self._run = threading.Event()
        self._run.set()
        self._stop = threading.Event()
        self.periods = 0
        self.t_start: float | None = None
        self.log: list[tuple[int, float]] = []
        self._thread = threading.Thread(target=self._loop, name=f"feeder:{dev.name}",
                                        daemon=True)
        self._thread.start()

    def _next(self, primed: bool) -> list[npt.NDArray[np.float64]] | None:
        out = []
        for i in range(1 if primed else self.PRIME):
            block = self.signal(self.periods + i)  # type: ignore[operator]
            if block is None:
                break
            out.append(block)
        return out or None

    def _loop(self) -> None:
        t0 = time.monotonic()
        k = 0
        primed = False
        dt = self.period / self.dev.rate / self.speed
        while not self._stop.is_set():
            if not self._run.is_set():
                self._run.wait(0.05)
                t0, k, primed = time.monotonic(), 0, False
                continue
            blocks = self._next(primed)
            if blocks is None:
                return
            while queued(self.fd) and not self._stop.is_set():
                time.sleep(0.001)              # the device has not read the last period yet
            if self.t_start is None:
                self.t_start = time.time()
            # one write: the first (PRIME periods, <= 64 KiB) goes into an empty pipe whole
            os.write(self.fd, b"".join(to_s16(b) for b in blocks))
            self.periods += len(blocks)
            self.log.append((self.periods * self.period, time.time()))
            k += 1
            primed = True
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
