"""Bearing fault diagnosis: which part is damaged, from the envelope spectrum of a long record.

Separate from the anomaly features (which only say *that* something changed): run on an alarm,
or on demand, over a record of raw samples long enough for 0.5 Hz resolution (2 s at least).

1. **Band** chosen from the signal: a 1/2-1/3 tree kurtogram (Antoni) of the complex envelope,
   among bands wide enough to hold the defect harmonics examined (``HARMONICS`` times BPFI plus a
   shaft sideband) — the most impulsive band is where bearing impacts ring.
2. **Envelope spectrum**: squared envelope of that band, Welch-averaged over 2 s segments
   (0.5 Hz; the whole record when it is shorter than 4 s, at least 2 s).
3. **Evidence** per defect family (BPFO outer race, BPFI inner race, BSF ball, FTF cage): the
   first ``HARMONICS`` orders, each the highest line within a slip tolerance of its frequency
   divided by the local noise floor (median of the spectrum within ``FLOOR_HZ``, shaft
   harmonics and the peak's own neighbourhood left out). Orders that lie within tolerance of a
   shaft harmonic or of another family's order are ambiguous and not counted (3 BPFO ≈ 2 BPFI on
   a 6205). Inner race: the ±1x shaft sidebands of each BPFI order add to its evidence (the
   defect turns with the shaft through the load zone); ball: the ±FTF sidebands of BSF.
4. **Verdict**: a family *qualifies* when at least ``MIN_ORDERS`` of its orders (the 1st or 2nd
   among them) stand ``SNR`` times above the floor. None qualifies → ``none``. Exactly one, or
   one whose evidence is at least ``DOMINANCE`` times the next → that part. Anything else →
   ``undetermined``: naming the wrong part is worse than naming none. The cage (a dense comb at
   low frequency) is named only when no other family qualifies; no family but an impulsive band
   (kurtosis over ``IMPULSIVE``) is ``undetermined``, not ``none``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.bearing import BearingGeometry, defect_frequencies

F64 = npt.NDArray[np.float64]

FAMILIES = {"bpfo": "outer_race", "bpfi": "inner_race", "bsf": "ball", "ftf": "cage"}
HARMONICS = 6
MIN_RECORD_S = 2.0        # 0.5 Hz resolution
SEGMENT_S = 2.0           # Welch segment (0.5 Hz) when the record holds at least two
FLOOR_HZ = 12.0           # half-width of the local noise floor window
SNR = 3.5                 # a line this many times over the floor (amplitude) is significant
MIN_ORDERS = 2
DOMINANCE = 3.0
MAX_LEVEL = 7
TOL = 0.01                # relative tolerance of an order's frequency (speed, geometry, slip)
IMPULSIVE = 2.0           # band kurtosis above which a record with no order is not "none"
BAND_TOP = 0.45           # bands stay below this fraction of the rate (anti-alias roll-off)


def _kurtogram_band(spec: npt.NDArray[np.complex128], fs: float, n: int, min_width: float
                    ) -> tuple[float, float, float]:
    """(lo, hi, kurtosis) of the 1/2-1/3 tree band whose complex envelope is most kurtic."""
    df = fs / n
    best = (0.0, fs / 2, -math.inf)
    for level in range(1, MAX_LEVEL + 1):
        for parts in (2 ** level, 3 * 2 ** (level - 1)):
            width = fs / 2 / parts
            if width < min_width:
                continue
            for i in range(parts):
                if (i + 1) * width > BAND_TOP * fs:
                    break
                a = max(1, math.ceil(i * width / df))
                b = min(len(spec) - 1, math.floor((i + 1) * width / df))
                if b - a < 16:
                    continue
                p = np.abs(np.fft.ifft(spec[a:b])) ** 2
                k = float(np.mean(p ** 2) / max(np.mean(p) ** 2, 1e-300) - 2.0)
                if k > best[2]:
                    best = (a * df, b * df, k)
    return best


def envelope_spectrum(x: F64, fs: float, lo: float, hi: float) -> tuple[F64, F64]:
    """(frequencies, amplitude) of the squared-envelope spectrum of band [lo, hi]."""
    n = len(x)
    spec = np.fft.rfft(x)
    df = fs / n
    a, b = max(1, math.ceil(lo / df)), min(len(spec) - 1, math.floor(hi / df))
    env = np.abs(np.fft.ifft(spec[a:b])) ** 2           # complex envelope, rate = b - a bins / T
    rate = (b - a) / (n / fs)
    env = env - env.mean()
    seg = len(env) if len(env) < 2 * SEGMENT_S * rate else int(SEGMENT_S * rate)
    win = np.hanning(seg)
    starts = range(0, len(env) - seg + 1, max(1, seg // 2))
    power = np.mean([np.abs(np.fft.rfft(env[s:s + seg] * win)) ** 2 for s in starts], axis=0)
    return np.arange(len(power)) * rate / seg, np.sqrt(power)


class _Judge:
    """Lines of an envelope spectrum against the local floor, shaft harmonics excluded."""

    def __init__(self, f: F64, amp: F64, shaft_hz: float) -> None:
        self.f, self.amp, self.fr = f, amp, shaft_hz
        self.df = float(f[1] - f[0])
        near = np.abs(f / shaft_hz - np.round(f / shaft_hz)) * shaft_hz
        self.shaft_mask = (near <= 2 * self.df) & (f > 0.5 * shaft_hz)

    def tol(self, freq: float) -> float:
        return 2.0 * self.df + TOL * freq

    def snr(self, freq: float) -> float:
        t = self.tol(freq)
        if freq + FLOOR_HZ >= self.f[-1]:
            return 0.0
        line = np.flatnonzero((self.f >= freq - t) & (self.f <= freq + t))
        i = int(line[np.argmax(self.amp[line])])
        if i in (line[0], line[-1]):
            return 0.0  # the flank of a line outside the tolerance, not a line of its own
        around = (np.abs(self.f - freq) <= FLOOR_HZ) & (np.abs(self.f - freq) > t + self.df)
        floor = float(np.median(self.amp[around & ~self.shaft_mask]))
        return float(self.amp[i]) / max(floor, 1e-300)

    def on_shaft(self, freq: float) -> bool:
        return abs(freq / self.fr - round(freq / self.fr)) * self.fr <= self.tol(freq)


def _ambiguous(freq: float, family: str, fd: dict[str, float], judge: _Judge) -> bool:
    """On a shaft harmonic, or within tolerance of another family's order (any order in the
    analysed range; the cage's first ``HARMONICS`` only, its comb is too dense)."""
    if judge.on_shaft(freq):
        return True
    top = float(judge.f[-1])
    for other in FAMILIES:
        if other == family:
            continue
        last = HARMONICS if other == "ftf" else int(top / fd[other]) + 1
        for j in range(1, last + 1):
            g = j * fd[other]
            if abs(g - freq) <= judge.tol(freq) + judge.tol(g):
                return True
    return False


def _family(family: str, fd: dict[str, float], judge: _Judge) -> dict[str, Any]:
    orders: dict[str, float | None] = {}
    strength, significant, low = 0.0, 0, False
    side = {"bpfi": judge.fr, "bsf": fd["ftf"]}.get(family)
    for k in range(1, HARMONICS + 1):
        freq = k * fd[family]
        if _ambiguous(freq, family, fd, judge):
            orders[str(k)] = None
            continue
        s = judge.snr(freq)
        orders[str(k)] = round(s, 2)
        if s >= SNR:
            significant += 1
            strength += math.log2(s)
            low = low or k <= 2
            if side is not None:  # sidebands count only around a present order
                for sb in (freq - side, freq + side):
                    if not _ambiguous(sb, family, fd, judge) and (r := judge.snr(sb)) >= SNR:
                        strength += 0.5 * math.log2(r)
    return {"frequency_hz": round(fd[family], 2), "snr": orders, "significant": significant,
            "strength": round(strength, 2),
            "qualifies": significant >= MIN_ORDERS and low}


def diagnose(samples: npt.ArrayLike, sample_rate: float, shaft_hz: float,
             bearing: BearingGeometry) -> dict[str, Any]:
    """``{fault, confidence, evidence}`` for a record of one vibration channel (a 2-D array:
    each channel is judged and channels that disagree make it ``undetermined``)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        return _combine([diagnose(x[:, c], sample_rate, shaft_hz, bearing)
                         for c in range(min(x.shape[1], 3))])
    seconds = len(x) / sample_rate
    if not (shaft_hz > 0 and math.isfinite(shaft_hz)):
        return _verdict("undetermined", 0.0, {"reason": "no shaft speed"})
    if seconds < MIN_RECORD_S:
        return _verdict("undetermined", 0.0, {"reason": f"record of {seconds:.2f} s is too "
                                              f"short: needs {MIN_RECORD_S:g} s for 0.5 Hz"})
    if not np.isfinite(x).all():
        return _verdict("undetermined", 0.0, {"reason": "non-finite samples"})
    fd = defect_frequencies(bearing, shaft_hz)
    x = x - x.mean()
    f_max = HARMONICS * max(fd["bpfo"], fd["bpfi"], fd["bsf"]) + shaft_hz + FLOOR_HZ
    if 2 * f_max >= sample_rate / 2:
        return _verdict("undetermined", 0.0, {"reason": "sample rate too low for the orders"})
    lo, hi, kurt = _kurtogram_band(np.fft.rfft(x), sample_rate, len(x), 1.2 * f_max)
    f, amp = envelope_spectrum(x, sample_rate, lo, hi)
    judge = _Judge(f, amp, shaft_hz)
    fams = {FAMILIES[k]: _family(k, fd, judge) for k in FAMILIES}
    evidence: dict[str, Any] = {"band_hz": [round(lo, 1), round(hi, 1)],
                                "kurtosis": round(kurt, 2), "resolution_hz": round(judge.df, 3),
                                "seconds": round(seconds, 2), "shaft_hz": round(shaft_hz, 3),
                                "families": fams}
    ranked = sorted(((v["strength"], k) for k, v in fams.items()
                     if v["qualifies"] and k != "cage"), reverse=True)
    if not ranked and fams["cage"]["qualifies"] and fams["cage"]["significant"] >= 3:
        ranked = [(fams["cage"]["strength"], "cage")]  # only alone: its comb is dense
    if not ranked:
        if kurt > IMPULSIVE:
            evidence["reason"] = "impulsive band but no defect order stands out"
            return _verdict("undetermined", 0.0, evidence)
        return _verdict("none", 0.0, evidence)
    top_s, top = ranked[0]
    second = ranked[1][0] if len(ranked) > 1 else 0.0
    if second > 0 and top_s < DOMINANCE * second:
        evidence["reason"] = f"{top} and {ranked[1][1]} both present"
        return _verdict("undetermined", 0.0, evidence)
    conf = (1.0 - second / top_s) * min(1.0, fams[top]["significant"] / 3)
    return _verdict(top, round(conf, 3), evidence)


def _verdict(fault: str, confidence: float, evidence: dict[str, Any]) -> dict[str, Any]:
    return {"fault": fault, "confidence": confidence, "evidence": evidence}


def _combine(per_channel: list[dict[str, Any]]) -> dict[str, Any]:
    named = {d["fault"] for d in per_channel} - {"none", "undetermined"}
    evidence = {"channels": [d["evidence"] for d in per_channel]}
    if len(named) > 1:
        return _verdict("undetermined", 0.0, {**evidence, "reason": "channels disagree"})
    if named:
        fault = named.pop()
        return _verdict(fault, max(d["confidence"] for d in per_channel
                                   if d["fault"] == fault), evidence)
    if all(d["fault"] == "none" for d in per_channel):
        return _verdict("none", 0.0, evidence)
    return _verdict("undetermined", 0.0, evidence)


RING_S = 4.0
"""Seconds of raw samples a vibration chain keeps for a diagnosis on alarm (2 Welch segments)."""


class SampleRing:
    """The last ``seconds`` of one source's raw samples (bounded: whole blocks are dropped from
    the front once the rest still covers ``seconds``; one block beyond at most)."""

    def __init__(self, seconds: float = RING_S) -> None:
        self.seconds = seconds
        self.rate: float | None = None
        self._blocks: deque[F64] = deque()
        self._n = 0

    def push(self, samples: npt.ArrayLike, rate: float) -> None:
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if rate != self.rate or (self._blocks and x.shape[1] != self._blocks[0].shape[1]):
            self._blocks.clear()
            self._n = 0
            self.rate = rate
        self._blocks.append(x.copy())
        self._n += len(x)
        keep = int(self.seconds * rate)
        while self._blocks and self._n - len(self._blocks[0]) >= keep:
            self._n -= len(self._blocks.popleft())

    @property
    def duration(self) -> float:
        return self._n / self.rate if self.rate else 0.0

    def samples(self) -> F64:
        if not self._blocks:
            return np.empty((0, 1))
        return np.vstack(list(self._blocks))

    def clear(self) -> None:
        self._blocks.clear()
        self._n = 0


def label(result: dict[str, Any]) -> str:
    """A short text for the status page and alerts: ``outer race (0.67)`` / ``undetermined``."""
    fault = str(result.get("fault", "undetermined"))
    if fault in ("none", "undetermined"):
        return "no bearing defect signature" if fault == "none" else "fault type undetermined"
    return f"{fault.replace('_', ' ')} ({float(result.get('confidence', 0.0)):.2f})"
