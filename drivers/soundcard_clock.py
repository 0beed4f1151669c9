"""The sound card driver's timeline (a mixin of :class:`.soundcard.SoundcardDriver`): the
clock discipline and the checks that refuse or skip what the device delivers.

Timestamps come from the sample counter (``t0 + frames / rate``), so blocks are exactly
contiguous while nothing is lost. The sound card's crystal is not the nominal rate (50 ppm is
~4 s/day), so on every callback the counter time is compared with a reference: PortAudio's
stream clock (``inputBufferAdcTime`` mapped to the wall clock at the start) or, when the stream
gives none, the wall clock (callback arrival minus one block). When the difference exceeds
``CLOCK_TOLERANCE_S`` (``CLOCK_TOLERANCE_WALL_S`` against the jittery wall clock) the timeline is
slewed by at most ``CLOCK_SLEW_S`` per callback (1 ms: below the windower's jitter tolerance,
so windows continue) until it is back within tolerance; counted in health as
``clock_corrections`` with the last ``clock_error_s``.

Fault checks: a stream that delivers faster than real time is refused (``too_fast``), a block
with non-finite samples is skipped as a hole (``invalid_blocks``), and a PortAudio stream clock
that disagrees with the wall clock by more than ``STREAM_CLOCK_LIMIT_S`` is dropped for the
wall clock (``stream_clock_broken``).

Everything here runs on PortAudio's thread with the driver's lock held. The timeline is a list
of anchors ``(frame index, its timestamp)``; a frame's time is its anchor's plus the frames
since, at the nominal rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_agent.drivers.soundcard_config import Config

CLOCK_TOLERANCE_S = 0.010        # counter time vs PortAudio's stream clock before slewing
CLOCK_TOLERANCE_WALL_S = 0.050   # ... vs the wall clock (callback scheduling jitter)
CLOCK_SLEW_S = 0.001             # largest correction per callback
# A device that delivers faster than real time (an unpaced file device, a broken clock) would
# stamp samples in the future: once the frames delivered run ahead of the wall clock by more
# than this (seconds, or this fraction of the time since the first block), the stream is
# refused as broken (DriverError, health error ``too_fast``) instead of being stored.
AHEAD_LIMIT_S = 0.5
AHEAD_LIMIT_FRACTION = 0.02
# PortAudio's stream clock further than this from the wall clock is not trusted.
STREAM_CLOCK_LIMIT_S = 1.0


class ClockMixin:
    """Clock discipline and fault checks of :class:`.soundcard.SoundcardDriver`."""

    cfg: Config
    _clock: Callable[[], float]
    _written: int
    _anchors: list[tuple[int, float]]
    _adc0: tuple[float, float] | None
    _wall0: float | None
    _in_latency: float
    _fault: str | None
    clock_error: float
    clock_corrections: int
    stream_clock_broken: bool
    invalid_blocks: int
    invalid_frames: int

    def _too_fast(self, frames: int) -> bool:
        """Refuse a stream whose frames run ahead of the wall clock (lock held)."""
        if self._wall0 is None:
            return False
        elapsed = self._clock() - self._wall0
        ahead = (self._written + frames) / self.cfg.sample_rate - elapsed
        if ahead <= max(AHEAD_LIMIT_S, AHEAD_LIMIT_FRACTION * elapsed):
            return False
        rate = (self._written + frames) / max(elapsed, 1e-3)
        self._fault = (f"sound card {self.cfg.device or 'default'!r} delivers faster than its "
                       f"nominal rate: {self._written + frames} frames in {elapsed:.2f} s "
                       f"({rate:.0f}/s for {self.cfg.sample_rate:.0f}/s nominal); its clock is "
                       "broken or it is not a real-time device — samples refused")
        return True

    def _skip(self, frames: int) -> None:
        """Drop a block with non-finite samples; the next block starts after the hole."""
        self.invalid_blocks += 1
        self.invalid_frames += frames
        if self._written == 0:
            return
        a_frame, a_time = self._anchors[-1]
        nxt = a_time + (self._written - a_frame + frames) / self.cfg.sample_rate
        if a_frame == self._written:
            self._anchors[-1] = (a_frame, nxt)
        else:
            self._anchors.append((self._written, nxt))

    def _trusted_adc(self, adc: Any, frames: int) -> Any:
        """PortAudio's ADC time, or None when it is absent or disagrees with the wall clock."""
        if not adc or self._adc0 is None:
            return adc if self._written == 0 else None
        ref = self._adc0[1] + (float(adc) - self._adc0[0])
        if abs(ref - (self._clock() - frames / self.cfg.sample_rate - self._in_latency)) \
                > STREAM_CLOCK_LIMIT_S:
            self.stream_clock_broken = True
            self._adc0 = None                    # fall back to the wall clock from now on
            return None
        return adc

    def _discipline(self, adc: Any, frames: int) -> None:
        """Slew the counter timeline toward the reference clock (called with the lock held)."""
        a_frame, a_time = self._anchors[-1]
        expected = a_time + (self._written - a_frame) / self.cfg.sample_rate
        if adc and self._adc0 is not None:
            ref, tol = self._adc0[1] + (float(adc) - self._adc0[0]), CLOCK_TOLERANCE_S
        else:
            ref = self._clock() - frames / self.cfg.sample_rate - self._in_latency
            tol = CLOCK_TOLERANCE_WALL_S
        err = expected - ref
        self.clock_error = err
        if abs(err) > tol:
            step = max(-CLOCK_SLEW_S, min(CLOCK_SLEW_S, err))
            if a_frame == self._written:
                self._anchors[-1] = (a_frame, a_time - step)
            else:
                self._anchors.append((self._written, expected - step))
            self.clock_corrections += 1
