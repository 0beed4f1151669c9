"""Sound-card capture (PortAudio/ALSA through ``sounddevice``, the optional ``[audio]`` extra).

``sounddevice`` is imported inside :meth:`SoundcardDriver.open`, so this module imports on a
machine without PortAudio; a missing package, library or device is a :class:`DriverError`
saying what to install or which devices exist.

PortAudio calls :meth:`SoundcardDriver._callback` on its own thread with each block. The
callback copies it into a fixed-size numpy ring (``buffer_seconds``) and wakes the asyncio
side; :meth:`read` takes everything captured so far as one :class:`WaveformBlock`. Nothing is
lost silently:

* *ring overrun* (the agent did not read for longer than the ring holds): the oldest samples are
  overwritten; the next block starts after the hole (its timestamp jumps, so the windower
  restarts) and carries ``metadata["gap_samples"]``; counted as ``errors["ring_overrun"]`` and
  ``overrun_samples`` in health;
* *input overflow* reported by PortAudio (the device dropped samples before we saw them): the
  number lost is unknown, so the stream time is re-anchored on PortAudio's ADC clock and the
  block gets ``metadata["input_overflow"] = True``; counted as ``errors["input_overflow"]``.

Timestamps come from the sample counter (``t0 + frames / rate``), so blocks are exactly
contiguous while nothing is lost; :mod:`edge_agent.drivers.soundcard_clock` keeps that timeline
on the card's reference clock (and refuses a stream running faster than real time, skips blocks
with non-finite samples).

Per-channel calibration (``raw``, ``dbfs``, ``mic_pa``, ``iepe``) and the config live in
:mod:`edge_agent.drivers.soundcard_config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.drivers.base import DriverDisconnected, DriverError, DriverHealth, DriverOutput
from edge_agent.drivers.soundcard_clock import ClockMixin
from edge_agent.drivers.soundcard_config import Channel as Channel
from edge_agent.drivers.soundcard_config import Config as Config
from edge_agent.drivers.soundcard_config import level_dbfs as level_dbfs
from edge_agent.records import WaveformBlock

log = logging.getLogger(__name__)
F64 = npt.NDArray[np.float64]
CLOSE_TIMEOUT_S = 2.0            # stopping a stream that hangs in the device is abandoned
_open_streams = 0                # streams open in this process
abandoned_streams = 0            # streams whose stop hung: PortAudio's teardown would hang too


class Stream(Protocol):
    """What the driver needs of ``sounddevice.InputStream`` (a fake in tests)."""

    @property
    def time(self) -> float: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


StreamFactory = Callable[..., Stream]


class SoundcardDriver(ClockMixin):
    streaming = True

    def __init__(self, cfg: Config, stream_factory: StreamFactory | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._clock = clock                # the wall clock (a virtual one in tests)
        self.name = cfg.name
        self.source_id = cfg.source_id or cfg.name
        self._factory = stream_factory
        self._health = DriverHealth(cfg.name, "soundcard")
        n_ch = len(cfg.channels)
        self.capacity = max(int(cfg.buffer_seconds * cfg.sample_rate), 4 * cfg.block_size)
        self._ring = np.zeros((self.capacity, n_ch), dtype=np.float32)
        cal = [c.scale_and_unit() for c in cfg.channels]
        self._scale = np.array([s for s, _ in cal])
        self.unit = cal[0][1]
        self._lock = threading.Lock()
        self._written = 0                  # frames written since open (monotonic)
        self._read = 0                     # frames handed out
        self._anchors: list[tuple[int, float]] = [(0, 0.0)]   # (frame index, its timestamp)
        self._overflow_frames: list[int] = []                 # frames where PortAudio lost data
        self._stream: Stream | None = None
        # what PortAudio (or the injected stream) raises: sd.PortAudioError is added on open
        self._errors: tuple[type[BaseException], ...] = (OSError, RuntimeError)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._adc0: tuple[float, float] | None = None   # (adc time, wall time) at the start
        self.overruns = 0
        self.overrun_samples = 0
        self.input_overflows = 0
        self.clock_corrections = 0
        self.clock_error = 0.0             # last counter-minus-reference time difference (s)
        self._fault: str | None = None      # why the stream was refused (too fast)
        self._in_latency = 0.0              # the stream's input latency (s), set on open
        self._wall0: float | None = None    # wall time of the first sample
        self.invalid_blocks = 0
        self.invalid_frames = 0
        self.stream_clock_broken = False
        self.too_fast = 0

    # -- PortAudio thread ---------------------------------------------------------------------
    def _callback(self, indata: npt.NDArray[np.float32], frames: int, time_info: Any,
                  status: Any) -> None:
        adc = getattr(time_info, "inputBufferAdcTime", None)
        with self._lock:
            if self._fault is not None:
                return                               # refused: nothing more is stored
            if self._written and self._too_fast(frames):
                return
            if not bool(np.isfinite(indata).all()):
                self._skip(frames)                   # a hole, never NaN samples downstream
                return
            adc = self._trusted_adc(adc, frames)
            if self._written == 0:
                # first block: its first sample was taken about one block ago
                t0 = self._clock() - frames / self.cfg.sample_rate - self._in_latency
                self._wall0 = t0
                self._anchors = [(0, t0)]
                self._adc0 = (float(adc), t0) if adc else None
            elif status and getattr(status, "input_overflow", False):
                self.input_overflows += 1
                self._overflow_frames.append(self._written)
                if adc and self._adc0 is not None:   # re-anchor on PortAudio's ADC clock
                    self._anchors.append(
                        (self._written, self._adc0[1] + (float(adc) - self._adc0[0])))
            else:
                self._discipline(adc, frames)
            data = indata[-self.capacity:]
            n = data.shape[0]
            at = (self._written + frames - n) % self.capacity
            first = min(n, self.capacity - at)
            self._ring[at:at + first] = data[:first]
            if first < n:
                self._ring[:n - first] = data[first:]
            self._written += frames
        loop, ev = self._loop, self._event
        if loop is not None and ev is not None:
            with contextlib.suppress(RuntimeError):   # the loop closed while the stream ran
                loop.call_soon_threadsafe(ev.set)

    # -- asyncio side -------------------------------------------------------------------------
    def _open_stream(self) -> Stream:
        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "samplerate": cfg.sample_rate, "channels": len(cfg.channels),
            "blocksize": cfg.block_size, "dtype": "float32", "latency": cfg.latency,
            "callback": self._callback,
        }
        if self._factory is not None:
            return self._factory(device=cfg.device, **kwargs)
        try:
            import sounddevice as sd
        except ImportError as exc:
            raise DriverError("sound card capture needs the 'sounddevice' package "
                              "(pip install 'edge-gateway-agent[audio]')") from exc
        except OSError as exc:             # sounddevice raises this when PortAudio is absent
            raise DriverError(f"sound card capture needs the PortAudio library "
                              f"(e.g. apt install libportaudio2): {exc}") from exc
        self._errors = (OSError, RuntimeError, sd.PortAudioError)
        device: int | str | None = cfg.device
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        try:
            sd.check_input_settings(device=device, channels=len(cfg.channels),
                                    samplerate=cfg.sample_rate, dtype="float32")
            stream: Stream = sd.InputStream(device=device, **kwargs)
        except (ValueError, sd.PortAudioError) as exc:
            try:
                names = [d["name"] for d in sd.query_devices() if d["max_input_channels"] > 0]
            except sd.PortAudioError:
                names = []
            raise DriverError(f"sound card {cfg.device or 'default'!r}: {exc}; input devices: "
                              f"{names or 'none found'}") from exc
        return stream

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        with self._lock:
            self._written = self._read = 0
            self._anchors = [(0, self._clock())]
            self._overflow_frames = []
            self._adc0 = None
            self._fault = None
            self._wall0 = None
        stream = self._open_stream()
        # A block reaches the callback this long after its last sample was captured (the
        # device's input latency, as PortAudio reports it): timestamps never lead the capture.
        lat = getattr(stream, "latency", 0.0)
        self._in_latency = float(lat) if isinstance(lat, int | float) and lat > 0 else 0.0
        try:
            stream.start()
        except self._errors as exc:
            stream.close()
            raise DriverError(f"sound card: cannot start the stream: {exc}") from exc
        self._stream = stream
        global _open_streams
        _open_streams += 1
        self._health.connected = True
        self._health.detail.update(device=self.cfg.device or "default",
                                   sample_rate=self.cfg.sample_rate, capacity=self.capacity)

    def _take(self) -> WaveformBlock | None:
        with self._lock:
            avail = self._written - self._read
            if avail <= 0:
                return None
            gap = 0
            if avail > self.capacity:                      # the writer lapped us
                gap = avail - self.capacity
                self._read += gap
                avail = self.capacity
                self.overruns += 1
                self.overrun_samples += gap
            # the time anchor for the first frame; a block never crosses the next anchor
            while len(self._anchors) > 1 and self._anchors[1][0] <= self._read:
                self._anchors.pop(0)
            a_frame, a_time = self._anchors[0]
            if len(self._anchors) > 1:
                avail = min(avail, self._anchors[1][0] - self._read)
            overflow = False
            while self._overflow_frames and self._overflow_frames[0] <= self._read:
                self._overflow_frames.pop(0)
                overflow = True
            if self._overflow_frames:
                avail = min(avail, self._overflow_frames[0] - self._read)
            at = self._read % self.capacity
            first = min(avail, self.capacity - at)
            out = np.empty((avail, self._ring.shape[1]))
            out[:first] = self._ring[at:at + first]
            if first < avail:
                out[first:] = self._ring[:avail - first]
            start = a_time + (self._read - a_frame) / self.cfg.sample_rate
            self._read += avail
        out *= self._scale
        meta: dict[str, object] = {}
        if gap:
            self._health.error("ring_overrun")
            meta["gap_samples"] = gap
        if overflow:
            self._health.error("input_overflow")
            meta["input_overflow"] = True
        return WaveformBlock(self.source_id, self.cfg.sample_rate,
                             tuple(c.name for c in self.cfg.channels), start, out, self.unit,
                             meta)

    async def read(self) -> DriverOutput:
        if self._event is None or self._stream is None:
            raise DriverError("soundcard: read() before open()")
        while True:
            if self._fault is not None:
                self.too_fast += 1
                self._health.error("too_fast")
                raise DriverError(self._fault)
            block = self._take()
            if block is not None:
                self._health.ok(block.n_samples * len(self.cfg.channels))
                self._health.detail.update(overruns=self.overruns,
                                           overrun_samples=self.overrun_samples,
                                           input_overflows=self.input_overflows)
                return [block]
            self._event.clear()
            if self._written - self._read > 0:
                continue
            try:
                await asyncio.wait_for(self._event.wait(), self.cfg.stall_timeout)
            except TimeoutError:
                raise DriverDisconnected(f"sound card: no audio for {self.cfg.stall_timeout} s "
                                         "(device gone or stream stopped)") from None

    async def close(self) -> None:
        """Stop and close the stream, bounded: a device that hangs in PortAudio's stop (a
        capture thread blocked in the driver) is abandoned after ``CLOSE_TIMEOUT_S``.

        The stream counts as abandoned from the moment its stop starts until the stop thread
        finishes, so a close cut short (a cancelled shutdown) still tells the CLI to leave
        without PortAudio's teardown, which would wait for that thread forever."""
        global _open_streams, abandoned_streams
        stream, self._stream = self._stream, None
        self._health.connected, self._loop = False, None   # a late callback wakes no one
        if stream is None:
            return
        _open_streams = max(0, _open_streams - 1)
        abandoned_streams += 1
        done = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stop() -> None:
            global abandoned_streams
            for op in (stream.stop, stream.close):
                try:
                    op()
                except self._errors:           # best effort on a possibly dead device
                    self._health.error("close")
            abandoned_streams -= 1             # stopped after all: teardown is safe again
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(done.set)

        # a daemon thread, not the default executor: an abandoned stop must not hold the
        # interpreter at exit
        threading.Thread(target=stop, name=f"soundcard-close:{self.name}", daemon=True).start()
        try:
            await asyncio.wait_for(done.wait(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._health.error("close_timeout")
            log.warning("sound card stream did not stop; abandoned",
                        extra={"driver": self.name, "timeout_s": CLOSE_TIMEOUT_S})

    def health(self) -> DriverHealth:
        self._health.detail.update(overruns=self.overruns, overrun_samples=self.overrun_samples,
                                   input_overflows=self.input_overflows,
                                   clock_corrections=self.clock_corrections,
                                   clock_error_s=round(self.clock_error, 6),
                                   invalid_blocks=self.invalid_blocks,
                                   invalid_frames=self.invalid_frames,
                                   too_fast=self.too_fast,
                                   stream_clock_broken=self.stream_clock_broken,
                                   buffer_fill=round((self._written - self._read) /
                                                     self.capacity, 3))
        return self._health


def create(cfg: Config) -> SoundcardDriver:
    return SoundcardDriver(cfg)
