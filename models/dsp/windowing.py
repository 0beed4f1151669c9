"""Fixed-length, hopped windows over waveform blocks, per source.

:class:`Windower` carries samples across blocks of one source, so a window may span several
blocks. A source's stream restarts (pending samples dropped, counted in ``resets`` by reason)
when a block does not continue the previous one: a time gap or overlap beyond ``tolerance``
seconds, a different sample rate, or different channels. Memory per source is bounded by
``length`` samples plus the block being pushed. Window times come from a per-stream sample
counter (``anchor + index / rate``), so they do not drift over long runs.

Timestamp jitter: sources stamped by another clock (a PLC stamping OPC-UA arrays on its task
tick, a sound card) deliver blocks whose ``start`` differs from the expected continuation. Such
a mismatch is *not* a gap while it stays within the tolerance ``max(2 samples, jitter x block,
5 ms, 3 x spread)``: ``jitter`` is a fraction of the block duration (the larger of the previous
and the new block's; default 0.25), ``spread`` the source's measured jitter (a running mean of
the absolute mismatch below 3/4 of a block, learnt quickly over the first blocks and kept across
resets of that source; a mismatch the size of a block is never learnt as jitter). A PLC stamping
80 ms blocks on a 100 ms tick thus keeps its stream once its spread is learnt, while a clean
source still resets on a lost block. Within tolerance the sample counter is kept and the anchor
is re-anchored slowly toward the stamps (a fraction of the mismatch per block, at most 2 % of a
block and half a hop), so jitter averages out, window times never step backwards and a slow
clock drift is followed. Resets and dropped samples are counted per source
(:meth:`Windower.stats`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.records import WaveformBlock

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Window:
    """``samples`` has shape ``(length, n_channels)``; ``end = start + length / sample_rate``.

    ``samples`` is read-only and may share memory with the windows cut from the same push.
    """

    source_id: str
    start: float
    end: float
    sample_rate: float
    channels: tuple[str, ...]
    samples: F64


@dataclass
class _Stream:
    sample_rate: float
    channels: tuple[str, ...]
    anchor: float                # time of sample index 0
    seen: int                    # samples received since the anchor
    pending: F64                 # samples from index `pending_at` on, not yet past a window start
    pending_at: int
    next_start: int              # sample index of the next window's first sample
    last_n: int = 0              # samples in the previous block (for the default tolerance)


@dataclass
class SourceStats:
    """What the windower did with one source, across its stream restarts."""

    resets: Counter[str]
    dropped_samples: int = 0     # samples discarded by resets (never windowed)
    windows: int = 0
    spread: float = 0.0          # running mean of |timestamp mismatch|, seconds
    observed: int = 0            # mismatches observed (learning rate 1/min(n, 16))


class Windower:
    """``Windower(length, hop)``: windows of ``length`` samples every ``hop`` samples.

    ``tolerance`` (seconds) is how far a block's ``start`` may differ from where the previous
    block ended before the stream restarts; default (``None``):
    ``max(2 / rate, jitter * block duration, 5 ms, 3 * measured spread)`` with the block
    duration the larger of the previous and the new block's.
    """

    SLEW_GAIN = 1.0 / 16          # fraction of a tolerated mismatch applied to the anchor per block
    MAX_STEP_BLOCK = 0.02         # anchor moves at most this fraction of a block per block ...
    MAX_STEP_HOP = 0.5            # ... and at most this fraction of a hop (never backwards)
    SPREAD_FACTOR = 3.0
    LEARN_BLOCKS = 16
    LEARN_MAX_BLOCK = 0.75        # mismatches this large (in blocks) are not learnt as jitter

    def __init__(self, length: int, hop: int, tolerance: float | None = None,
                 jitter: float = 0.25) -> None:
        if length < 2 or hop < 1:
            raise ValueError(f"window length must be >= 2 and hop >= 1, got {length}, {hop}")
        if not 0 <= jitter <= 10:
            raise ValueError(f"jitter must be a fraction of a block in [0, 10], got {jitter}")
        self.length, self.hop = int(length), int(hop)
        self.tolerance = tolerance
        self.jitter = float(jitter)
        self.resets: Counter[str] = Counter()
        self.dropped_samples = 0          # samples discarded by resets (never windowed)
        self.windows = 0
        self._streams: dict[str, _Stream] = {}
        self._sources: dict[str, SourceStats] = {}

    def stats(self) -> dict[str, dict[str, object]]:
        """Per source: resets by reason, dropped samples, windows, measured jitter (ms)."""
        return {sid: {"resets": dict(s.resets), "dropped_samples": s.dropped_samples,
                      "windows": s.windows, "jitter_ms": round(s.spread * 1e3, 3)}
                for sid, s in self._sources.items()}

    def _tol(self, sr: float, n_samples: int, spread: float = 0.0) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return max(2.0 / sr, self.jitter * n_samples / sr, 5e-3, self.SPREAD_FACTOR * spread)

    def _learn(self, src: SourceStats, err: float, block_s: float) -> None:
        if abs(err) >= self.LEARN_MAX_BLOCK * block_s:
            return      # the size of a lost (or repeated) block: never learnt as jitter
        src.observed += 1
        gain = 1.0 / min(src.observed, self.LEARN_BLOCKS)
        src.spread += gain * (abs(err) - src.spread)

    def _discontinuity(self, st: _Stream, src: SourceStats, block: WaveformBlock,
                       n: int) -> str | None:
        """Why a block of ``n`` samples does not continue ``st`` (the reset reason), or ``None``.

        Owns the timestamp-jitter handling: a mismatch within tolerance re-anchors the stream
        slowly toward the stamps, and the mismatch of every non-empty block (tolerated or not)
        is offered to the source's spread learning.
        """
        if st.sample_rate != block.sample_rate:
            return "sample_rate"
        if st.channels != tuple(block.channels):
            return "channels"
        reason = None
        expected = st.anchor + st.seen / st.sample_rate
        err = float(block.start) - expected
        block_s = max(st.last_n, n) / st.sample_rate
        if abs(err) > self._tol(st.sample_rate, max(st.last_n, n), src.spread):
            reason = "gap" if err > 0 else "overlap"
        elif n:
            lim = min(self.MAX_STEP_BLOCK * block_s,
                      self.MAX_STEP_HOP * self.hop / st.sample_rate)
            st.anchor += min(lim, max(-lim, err * self.SLEW_GAIN))
        if n:
            self._learn(src, err, block_s)
        return reason

    def reset(self, source_id: str | None = None) -> None:
        """Forget one source (or all): the next block starts a fresh stream."""
        if source_id is None:
            self._streams.clear()
        else:
            self._streams.pop(source_id, None)

    def push(self, block: WaveformBlock) -> list[Window]:
        """Add a block; return every window completed by it, oldest first."""
        x = np.asarray(block.samples, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != len(block.channels):
            raise ValueError(f"{block.source_id}: samples shape {x.shape} does not match "
                             f"channels {block.channels}")
        if not (block.sample_rate > 0):
            raise ValueError(f"{block.source_id}: sample rate must be > 0")
        src = self._sources.get(block.source_id)
        if src is None:
            src = self._sources[block.source_id] = SourceStats(Counter())
        st = self._streams.get(block.source_id)
        if st is not None:
            reason = self._discontinuity(st, src, block, x.shape[0])
            if reason is not None:
                self.resets[reason] += 1
                self.dropped_samples += st.pending.shape[0]
                src.resets[reason] += 1
                src.dropped_samples += st.pending.shape[0]
                st = None
        if st is None:
            st = _Stream(float(block.sample_rate), tuple(block.channels), float(block.start), 0,
                         np.empty((0, x.shape[1])), 0, 0)
            self._streams[block.source_id] = st
        if x.shape[0] == 0:
            return []
        st.last_n = x.shape[0]
        buf = np.concatenate([st.pending, x]) if st.pending.shape[0] else x
        buf_at = st.pending_at
        st.seen += x.shape[0]
        out: list[Window] = []
        sr = st.sample_rate
        while st.next_start + self.length <= st.seen:
            i = st.next_start - buf_at
            w = buf[i:i + self.length]
            w.flags.writeable = False
            t0 = st.anchor + st.next_start / sr
            out.append(Window(block.source_id, t0, t0 + self.length / sr, sr, st.channels, w))
            st.next_start += self.hop
        keep_from = min(st.next_start, st.seen)
        st.pending = buf[keep_from - buf_at:]
        if st.pending.base is not None and st.pending.shape[0] < buf.shape[0] // 2:
            st.pending = st.pending.copy()      # do not pin a large block for a small tail
        st.pending_at = keep_from
        self.windows += len(out)
        src.windows += len(out)
        return out
