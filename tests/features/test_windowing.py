"""Windower: windows across blocks, exact times, resets on gap / rate / channel change, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.models.windowing import Windower
from edge_agent.records import WaveformBlock

SR = 1000.0


def block(start_idx: int, n: int, ch: tuple[str, ...] = ("h", "v"), sr: float = SR,
          t0: float = 100.0, src: str = "s") -> WaveformBlock:
    idx = np.arange(start_idx, start_idx + n, dtype=np.float64)
    data = np.stack([idx + 0.5 * k for k in range(len(ch))], axis=1)
    return WaveformBlock(src, sr, ch, t0 + start_idx / sr, data)


@pytest.mark.parametrize("sizes", [[1000], [7] * 143, [1, 2, 3, 500, 1, 493], [256] * 4])
@pytest.mark.parametrize(("length", "hop"), [(128, 64), (100, 100), (50, 80), (64, 1)])
def test_same_windows_whatever_the_block_sizes(sizes: list[int], length: int, hop: int) -> None:
    w = Windower(length, hop)
    out = []
    i = 0
    for n in sizes:
        out += w.push(block(i, n))
        i += n
    total = sum(sizes)
    starts = list(range(0, total - length + 1, hop))
    assert [round((x.start - 100.0) * SR) for x in out] == starts
    for x, s in zip(out, starts, strict=True):
        assert x.samples.shape == (length, 2)
        np.testing.assert_array_equal(x.samples[:, 0], np.arange(s, s + length))
        np.testing.assert_array_equal(x.samples[:, 1], np.arange(s, s + length) + 0.5)
        assert x.end == pytest.approx(x.start + length / SR)
        assert x.channels == ("h", "v") and x.sample_rate == SR and x.source_id == "s"
    assert w.windows == len(out) and not w.resets


def test_windows_are_read_only() -> None:
    out = Windower(10, 5).push(block(0, 30))
    with pytest.raises(ValueError):
        out[0].samples[0, 0] = 1.0


def test_gap_rate_and_channel_changes_reset() -> None:
    w = Windower(100, 50)
    assert len(w.push(block(0, 120))) == 1
    # a 0.5 s gap: the 70 pending samples are dropped, counting restarts at the new block
    out = w.push(block(620, 100))
    assert w.resets["gap"] == 1 and w.dropped_samples == 70
    assert len(out) == 1 and out[0].start == pytest.approx(100.62)
    w.push(block(720, 30, sr=2000.0, t0=100.0 + 720 / SR - 720 / 2000.0))
    assert w.resets["sample_rate"] == 1
    w.push(block(0, 10, ch=("x",), sr=2000.0, t0=200.0))
    assert w.resets["channels"] == 1
    w.push(block(0, 10, ch=("x",), sr=2000.0, t0=199.0))      # time went backwards
    assert w.resets["overlap"] == 1


def test_small_jitter_is_tolerated_and_sources_are_separate() -> None:
    w = Windower(100, 100)
    a = w.push(block(0, 150, src="a"))
    b = w.push(block(0, 60, src="b"))
    jit = block(150, 50, src="a")
    jit.start += 0.0004                                 # < 1 sample + 1 ms
    a += w.push(jit)
    b += w.push(block(60, 60, src="b"))
    assert not w.resets
    assert [x.source_id for x in a] == ["a", "a"] and [x.source_id for x in b] == ["b"]
    assert a[1].start == pytest.approx(100.1)           # from the sample counter, no drift


def test_memory_stays_bounded() -> None:
    w = Windower(256, 128)
    for k in range(2000):
        w.push(block(k * 100, 100))
    st = w._streams["s"]
    assert st.pending.shape[0] < 256
    assert w.windows == (2000 * 100 - 256) // 128 + 1


def test_bad_blocks() -> None:
    w = Windower(10, 5)
    with pytest.raises(ValueError, match="channels"):
        w.push(WaveformBlock("s", SR, ("a", "b"), 0.0, np.zeros((5, 3))))
    with pytest.raises(ValueError):
        Windower(1, 1)
    assert w.push(block(0, 0)) == []
