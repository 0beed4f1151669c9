"""Windower: windows across blocks, exact times, resets on gap / rate / channel change, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.models.dsp.windowing import Windower
from edge_agent.records import WaveformBlock
from tests.drivers.typed import num

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


def jittered(n_blocks: int, n: int, sr: float, jitter: float, seed: int = 1,
             ppm: float = 0.0, gap_at: int | None = None, gap: float = 0.0) -> list[WaveformBlock]:
    """Blocks of a continuous stream whose start times carry clock jitter (and optional drift)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_blocks):
        true = 1000.0 + k * n / sr * (1 + ppm * 1e-6) + (gap if gap_at is not None and k >= gap_at
                                                          else 0.0)
        data = np.arange(k * n, (k + 1) * n, dtype=np.float64)[:, None]
        out.append(WaveformBlock("plc", sr, ("x",), true + rng.uniform(-jitter, jitter), data))
    return out


def test_plc_clock_jitter_keeps_nearly_all_windows() -> None:
    # review repro: 1024-sample arrays at 10240 Hz, window 2048 / hop 1024, ±2 ms jitter
    w = Windower(2048, 1024)
    out = [x for b in jittered(200, 1024, 10240.0, 0.002) for x in w.push(b)]
    assert not w.resets and len(out) == 199 and w.dropped_samples == 0
    starts = np.array([x.start for x in out])
    assert np.all(np.diff(starts) > 0)                    # never steps backwards
    true = 1000.0 + np.arange(199) * 0.1
    assert np.max(np.abs(starts - true)) < 0.0025         # jitter does not accumulate into drift
    # the window contents are the contiguous stream
    np.testing.assert_array_equal(out[150].samples[:, 0], np.arange(150 * 1024, 152 * 1024))


def test_clock_drift_is_followed_and_real_gap_still_resets() -> None:
    # a source clock 200 ppm off the nominal rate: 2 ms over 100 blocks of 0.1 s, no reset
    w = Windower(2048, 1024)
    out = [x for b in jittered(400, 1024, 10240.0, 0.001, ppm=200.0) for x in w.push(b)]
    assert not w.resets and len(out) == 399
    assert abs(out[-1].start - (1000.0 + 398 * 0.1 * (1 + 200e-6))) < 0.003
    # a 100 ms dropout (one lost array) is a real gap even with jitter
    w2 = Windower(2048, 1024)
    for b in jittered(50, 1024, 10240.0, 0.002, gap_at=25, gap=0.1):
        w2.push(b)
    assert w2.resets == {"gap": 1}
    # an explicit tolerance still overrides the default
    w3 = Windower(2048, 1024, tolerance=0.0005)
    for b in jittered(20, 1024, 10240.0, 0.002):
        w3.push(b)
    assert sum(w3.resets.values()) > 0


def ticked(n_blocks: int, tick: float, n: int = 2048, sr: float = 25600.0, seed: int = 0,
           gap_at: int | None = None, gap_blocks: int = 0) -> list[WaveformBlock]:
    """80 ms blocks stamped (at their end) by a PLC task running every ``tick`` s: the stamp
    is the first tick after the block filled, so it is late by anything in [0, tick)."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, tick)
    out = []
    for k in range(n_blocks):
        idx = k + (gap_blocks if gap_at is not None and k >= gap_at else 0)
        end = 1000.0 + (idx + 1) * n / sr
        stamp = np.ceil((end - phase) / tick) * tick + phase
        data = np.arange(idx * n, (idx + 1) * n, dtype=np.float64)[:, None]
        out.append(WaveformBlock("plc", sr, ("x",), float(stamp) - n / sr, data))
    return out


@pytest.mark.parametrize("tick", [0.05, 0.1])
@pytest.mark.parametrize(("length", "hop"), [(2048, 1024), (8192, 4096)])
def test_plc_tick_stamps_keep_99_percent_of_windows(tick: float, length: int, hop: int) -> None:
    n_blocks = 1500
    w = Windower(length, hop)
    out = [x for b in ticked(n_blocks, tick) for x in w.push(b)]
    ideal = (n_blocks * 2048 - length) // hop + 1
    assert len(out) >= 0.99 * ideal, (len(out), ideal, w.resets)
    starts = np.array([x.start for x in out])
    learnt = starts > 1000.0 + 20 * 0.08                     # past the first 20 blocks
    assert np.all(np.diff(starts[learnt]) > 0)               # never steps backwards
    st = w.stats()["plc"]
    assert st["windows"] == len(out)
    assert 0.2 * tick * 1e3 < num(st, "jitter_ms") < 0.4 * tick * 1e3  # ~ tick / 4 measured
    # a real dropout of 4 blocks (320 ms) is still a gap, counted for its source
    w2 = Windower(length, hop)
    for b in ticked(300, tick, gap_at=200, gap_blocks=4):
        w2.push(b)
    assert w2.resets["gap"] >= 1
    assert w2.stats()["plc"]["resets"]["gap"] >= 1  # type: ignore[index]


def test_jitter_fraction_is_configurable_and_stats_are_per_source() -> None:
    w = Windower(100, 50, jitter=0.0)          # only 2 samples / 5 ms / measured spread
    w.push(block(0, 100, src="a"))
    late = block(100, 100, src="a")
    late.start += 0.02                          # 20 ms late: 0.2 of a block
    w.push(late)
    assert w.stats()["a"]["resets"] == {"gap": 1}
    assert w.stats()["a"]["dropped_samples"] == 50
    w2 = Windower(100, 50)                      # default 0.25 of a block: jitter
    w2.push(block(0, 100, src="a"))
    w2.push(block(0, 30, src="b"))
    late = block(100, 100, src="a")
    late.start += 0.02
    w2.push(late)
    assert not w2.resets and set(w2.stats()) == {"a", "b"}
    assert w2.stats()["b"] == {"resets": {}, "dropped_samples": 0, "windows": 0,
                               "jitter_ms": 0.0}
    with pytest.raises(ValueError, match="jitter"):
        Windower(10, 5, jitter=-1)


def test_repeated_gaps_of_a_block_are_never_learnt_as_jitter() -> None:
    # segments of 10 blocks, each followed by a one-block dropout: every dropout resets
    w = Windower(2048, 1024)
    k = 0
    for _seg in range(12):
        for _ in range(10):
            w.push(block(k * 1024, 1024, sr=10240.0, src="seg"))
            k += 1
        k += 1                                   # one block lost
    assert w.resets == {"gap": 11}
    assert w.stats()["seg"]["jitter_ms"] == 0.0
