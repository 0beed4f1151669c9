"""Block-by-block polyphase resampling that equals a one-shot ``resample_poly``.

:class:`StreamResampler` turns a stream of :class:`~edge_agent.records.WaveformBlock`s at one
rate into blocks at a lower (or any rational) rate with :func:`scipy.signal.resample_poly`
(anti-aliasing Kaiser-windowed FIR, ``10 * max(up, down)`` taps per side). It keeps the input
it still needs (overlap handling): each output sample is computed only once its whole filter
support has arrived, so the stream's output equals a one-shot resample of the concatenated input
away from the stream's end (and exactly at its start, where both pad with zeros). Output lags
input by ``10 * max(up, down) / up`` input samples. Timestamps follow the output sample index:
sample ``m`` is at ``t0 + m / out_rate``. A block that does not continue the previous one (a
gap, a rate or channel change) restarts the stream.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from edge_agent.records import WaveformBlock

F64 = npt.NDArray[np.float64]


def ratio(in_rate: float, out_rate: float) -> tuple[int, int]:
    """``(up, down)`` with ``in_rate * up / down == out_rate``; ValueError if no small ratio
    gives it exactly."""
    fr = Fraction(out_rate / in_rate).limit_denominator(1000)
    if not math.isclose(in_rate * fr.numerator / fr.denominator, out_rate, rel_tol=1e-9):
        raise ValueError(f"cannot resample {in_rate:g} Hz to {out_rate:g} Hz by a ratio of "
                         f"small integers")
    return fr.numerator, fr.denominator


class StreamResampler:
    def __init__(self, in_rate: float, out_rate: float) -> None:
        self.in_rate, self.out_rate = float(in_rate), float(out_rate)
        self.up, self.down = ratio(in_rate, out_rate)
        self.half_len = 10 * max(self.up, self.down)
        self._key: tuple[str, tuple[str, ...], str] | None = None
        self._reset()

    def _reset(self) -> None:
        self._buf: F64 = np.empty((0, 0))
        self._b0 = 0            # global input index of _buf[0] (a multiple of down)
        self._next_m = 0        # next global output index to emit
        self._t0 = 0.0          # time of global input sample 0
        self._n_in = 0          # input samples seen since the (re)start

    def push(self, block: WaveformBlock) -> WaveformBlock | None:
        """The resampled samples ``block`` completes (None while none is complete)."""
        key = (block.source_id, block.channels, block.unit)
        expected = self._t0 + self._n_in / self.in_rate
        if (key != self._key or block.sample_rate != self.in_rate or self._n_in == 0
                or abs(block.start - expected) > 0.5 / self.in_rate):
            self._reset()
            self._key = key
            self._t0 = block.start
            self._buf = np.empty((0, block.samples.shape[1]))
        self._buf = np.concatenate([self._buf, np.asarray(block.samples, dtype=np.float64)])
        self._n_in += block.n_samples
        y = self._ready()
        if y is None:
            return None
        start = self._t0 + (self._next_m - len(y)) / self.out_rate
        return WaveformBlock(block.source_id, self.out_rate, block.channels, start,
                             np.ascontiguousarray(y), block.unit, dict(block.metadata))

    def _ready(self) -> F64 | None:
        n = self._buf.shape[0]
        # the last output whose right filter support lies inside what has arrived
        last = ((self._b0 + n - 1) * self.up - self.half_len) // self.down
        if last < self._next_m:
            return None
        from scipy.signal import resample_poly  # ~1-3 s to import: only where resampling

        y = resample_poly(self._buf, self.up, self.down, axis=0)
        m0 = self._b0 * self.up // self.down        # global index of y[0]
        out = y[self._next_m - m0:last + 1 - m0]
        self._next_m = last + 1
        # keep the input the next output needs, from a multiple of down
        need = max(0, (self._next_m * self.down - self.half_len) // self.up)
        b0 = need // self.down * self.down
        self._buf = self._buf[b0 - self._b0:]
        self._b0 = b0
        return out
