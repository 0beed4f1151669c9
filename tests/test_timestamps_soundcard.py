"""Sound-card sample timestamps over minutes, through the real PortAudio/ALSA path.

Three minutes of paced audio from two virtual ALSA microphones (tests/drivers/alsa_rig.py),
captured by the real driver in a background process that the session started at its first
test (tests/drivers/alsa_clock.py); this module sorts near the end of the suite, so it only
waits for what is left of the capture (run alone, it waits the whole three minutes).

Against the feeder's own record of when it wrote each period (its real-time clock):

* every sample arrives once and in order (the ramp signal's codes run on across blocks);
* consecutive blocks' timestamps neither gap nor overlap: each step is zero or one clock slew
  (at most ``CLOCK_SLEW_S``), and there are no more slews than the driver reports;
* the timestamp span matches the sample count at the nominal rate for the nominal device, and
  departs from it by the device's real rate for the one fed 500 ppm fast (the timestamps follow
  the stream clock, not the sample count);
* the timestamps' drift against the feeder's clock stays within ``DRIFT_BOUND_S``.

Why 20 ms: the driver lets its sample-count time wander up to ``CLOCK_TOLERANCE_S`` (10 ms) from
PortAudio's stream clock before slewing it back 1 ms per block; the stream clock of this device
is the arrival of its periods, which jitters with scheduling (a period late by tens of
milliseconds on a loaded machine) — the 10-second medians remove that jitter, not a trend.
Without the clock discipline the fast device would drift 90 ms over the three minutes; a lost or
doubled period would shift everything after it by 64 ms: both fail the bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.drivers.soundcard_clock import CLOCK_SLEW_S, CLOCK_TOLERANCE_S
from tests.drivers.alsa_clock import MARGIN_S, SECONDS, ClockRun

DRIFT_BOUND_S = 2 * CLOCK_TOLERANCE_S
EXACT_S = 1e-6                 # float64 timestamps of ~1.8e9 s: steps below this are zero


def load(run: ClockRun, name: str, result: dict[str, Any]) -> dict[str, Any]:
    z = np.load(run.out / f"edgeclk_{name}.npz")
    return {k: z[k] for k in z.files} | result[name] | {"rate": float(result["rate"])}


def offsets(d: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """For each feeder write: the driver's timestamp of the last sample written minus the time
    of the write (the feeder's clock), and that time since the first write."""
    counts = d["counts"].astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(counts)])
    fed = d["fed_frames"].astype(np.int64)
    at = d["fed_at"]
    keep = fed <= cum[-1]                                 # captured before the child stopped
    fed, at = fed[keep], at[keep]
    blk = np.searchsorted(cum, fed - 1, side="right") - 1
    ts = d["starts"][blk] + (fed - 1 - cum[blk]) / d["rate"]
    return ts - at, at - at[0]


def check_device(d: dict[str, Any]) -> dict[str, float]:
    rate, counts, starts = d["rate"], d["counts"], d["starts"]
    health = d["health"]
    n = int(counts.sum())
    assert n >= 0.95 * SECONDS * rate, f"only {n / rate:.0f} s captured"
    assert health["too_fast"] == 0 and health["overruns"] == 0, health
    assert health["input_overflows"] == 0 and not health["stream_clock_broken"], health
    # every sample once, in order
    assert d["inside_contiguous"], "samples lost or repeated inside a block"
    nxt = (d["firsts"][:-1] + counts[:-1]) % 65536
    assert np.array_equal(nxt, d["firsts"][1:]), "samples lost or repeated between blocks"
    # no gap, no overlap: each step is zero or one slew
    ends = starts + counts / rate
    steps = starts[1:] - ends[:-1]
    assert np.abs(steps).max() <= CLOCK_SLEW_S + EXACT_S, np.abs(steps).max()
    assert int(np.sum(np.abs(steps) > EXACT_S)) <= health["clock_corrections"]
    # drift against the feeder's clock, by 10 s medians
    off, t = offsets(d)
    med = np.array([np.median(off[(t >= a) & (t < a + 10)]) for a in range(0, int(t[-1]) - 9, 10)])
    assert len(med) >= 15, len(med)
    drift = float(np.abs(med - med[0]).max())
    assert drift <= DRIFT_BOUND_S, (drift, med - med[0])
    # a sample is stamped about when it was written to the device: never ahead of it by more
    # than the tolerance, never behind by more than one period and the tolerance
    assert -0.064 - 2 * CLOCK_TOLERANCE_S <= float(np.median(off)) <= DRIFT_BOUND_S, off
    return {"span_minus_count_s": float(ends[-1] - starts[0] - n / rate), "drift_s": drift,
            "seconds": n / rate, "corrections": float(health["clock_corrections"])}


@pytest.mark.timeout(SECONDS + MARGIN_S + 60)
def test_sample_timestamps_follow_the_stream_clock_over_minutes(
        soundcard_clock_run: ClockRun | None) -> None:
    run = soundcard_clock_run
    assert run is not None, "the session fixture starts the capture when this test is selected"
    result = run.result()
    nominal = check_device(load(run, "nominal", result))
    fast = check_device(load(run, "fast", result))
    # nominal: the span is the sample count at the nominal rate (give or take the slews that
    # scheduling jitter can cause, each undone later: never a trend)
    assert abs(nominal["span_minus_count_s"]) <= DRIFT_BOUND_S, nominal
    # 500 ppm fast: the span is shorter than the count says by the device's real rate
    ppm = float(result["fast"]["speed"]) - 1.0
    want = -fast["seconds"] * ppm / (1 + ppm)
    assert abs(fast["span_minus_count_s"] - want) <= DRIFT_BOUND_S, (fast, want)
    assert fast["corrections"] >= abs(want) / CLOCK_SLEW_S / 2, fast
    Path(run.out / "figures.txt").write_text(f"nominal {nominal}\nfast {fast}\n")
