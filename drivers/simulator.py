"""Simulated plant: a motor-driven pump with a rolling-element bearing that develops a fault.

The embedded default source, so the agent runs end to end with no hardware. Per block it yields

* a 2-channel (``h``, ``v``) drive-end accelerometer waveform in g: shaft harmonics (1x unbalance,
  2x misalignment) with slow speed drift, broadband noise, and — once the scripted fault starts —
  a bearing-defect impulse train at BPFO (outer race) or BPFI (inner race, amplitude-modulated by
  shaft rotation), each impulse ringing a structural resonance;
* a microphone waveform in Pa: blade-pass tone and harmonics, flow noise, and defect clicks;
* process readings: bearing temperature, discharge pressure, motor current and shaft speed, with
  slow plausible drift (temperature and current rise as the fault grows).

The fault severity is 0 before ``fault.onset`` and grows linearly to 1 over ``fault.growth``
(and is 0 again from ``onset + repaired_after``: the part was replaced).
Everything is deterministic under ``seed``: :class:`SimulatedPlant` is a pure generator the
training script also uses; :class:`SimulatorDriver` paces it to wall-clock time (or runs flat
out with ``pace = "fast"``).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Literal

import numpy as np
from pydantic import Field

from edge_agent.bearing import BearingGeometry, defect_frequencies
from edge_agent.drivers.base import DriverError, DriverHealth, DriverOutput
from edge_agent.records import Reading, WaveformBlock, parse_ts
from edge_agent.settings import Duration, Model


class FaultScript(Model):
    kind: Literal["none", "outer_race", "inner_race"] = "outer_race"
    onset: Duration = Field(60.0, ge=0)
    growth: Duration = Field(60.0, gt=0)
    amplitude_g: float = Field(2.0, ge=0)  # peak impulse amplitude at full severity
    # The part is replaced this long after the onset (severity back to 0); None: never.
    repaired_after: Duration | None = Field(None, gt=0)


class Config(Model):
    kind: Literal["simulator"]
    name: str = "sim"
    asset: str = Field("pump-01", pattern=r"^(?:[A-Za-z0-9_.\-]+)$")
    seed: int = 42
    pace: Literal["realtime", "fast"] = "realtime"
    block: Duration = Field(0.5, gt=0, le=10)
    start_time: str | None = None  # RFC 3339; default: wall time when the driver first opens
    shaft_speed_rpm: float = Field(1800.0, gt=0)
    vibration_rate: float = Field(20000.0, gt=0)
    microphone: bool = True
    microphone_rate: float = Field(16000.0, gt=0)
    resonance_hz: float = Field(3500.0, gt=0)
    noise_g: float = Field(0.02, ge=0)
    # A 6205-type deep-groove ball bearing (diameters in mm).
    bearing: BearingGeometry = BearingGeometry(n_balls=9, ball_diameter=7.94,
                                               pitch_diameter=39.04)
    fault: FaultScript = FaultScript()

    def waveform_sources(self) -> tuple[str, ...]:
        """Waveform ``source_id``s this driver emits (pipelines are checked against them)."""
        mic = (f"{self.asset}.mic",) if self.microphone else ()
        return (f"{self.asset}.de_accel", *mic)

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.resonance_hz >= self.vibration_rate / 2:
            out.append(("resonance_hz", "must be below half of vibration_rate"))
        if self.start_time is not None:
            try:
                parse_ts(self.start_time)
            except ValueError:
                out.append(("start_time", "must be an RFC 3339 time, e.g. 2026-01-01T00:00:00Z"))
        return out


class SimulatedPlant:
    """Deterministic generator of consecutive blocks (no pacing, no I/O)."""

    def __init__(self, cfg: Config, start: float) -> None:
        self.cfg = cfg
        self.start = start
        self.rng = np.random.default_rng(cfg.seed)
        self.t = 0.0                      # simulated seconds since start
        self._vib_n = 0                   # samples emitted so far
        self._mic_n = 0
        self._shaft_phase = 0.0
        self._mic_phase = 0.0
        self._next_impulse = 0.0          # sim time of the next defect impulse
        self._temp = 45.0 + 3 * self.rng.random()

    def severity(self, t: float) -> float:
        f = self.cfg.fault
        if f.kind == "none" or t < f.onset or (
                f.repaired_after is not None and t >= f.onset + f.repaired_after):
            return 0.0
        return min(1.0, (t - f.onset) / f.growth)

    def shaft_hz(self, t: float) -> float:
        drift = 1.0 + 0.004 * math.sin(2 * math.pi * t / 97.0)
        return self.cfg.shaft_speed_rpm / 60.0 * drift

    def next_block(self) -> DriverOutput:
        cfg = self.cfg
        t0, dt = self.t, float(cfg.block)
        sev = self.severity(t0)
        fr = self.shaft_hz(t0)
        out: DriverOutput = [self._vibration(t0, dt, fr, sev)]
        if cfg.microphone:
            out.append(self._microphone(t0, dt, fr, sev))
        out.extend(self._process(t0 + dt, fr, sev))
        self.t = t0 + dt
        return out

    def _vibration(self, t0: float, dt: float, fr: float, sev: float) -> WaveformBlock:
        cfg, rng = self.cfg, self.rng
        fs = cfg.vibration_rate
        n = round((t0 + dt) * fs) - self._vib_n
        tt = np.arange(n) / fs
        phase = self._shaft_phase + 2 * math.pi * fr * tt
        self._shaft_phase = float((self._shaft_phase + 2 * math.pi * fr * n / fs) % (2 * math.pi))
        load = 1.0 + 0.05 * math.sin(2 * math.pi * t0 / 41.0)
        base = load * (0.06 * np.sin(phase) + 0.025 * np.sin(2 * phase + 0.7)
                       + 0.01 * np.sin(3 * phase + 1.9))
        # The vertical axis sees the same rotor with its own phase lags (continuous across
        # blocks: every term follows the accumulated shaft phase).
        vert = load * 0.8 * (0.06 * np.sin(phase - 0.9) + 0.025 * np.sin(2 * phase - 1.1)
                             + 0.01 * np.sin(3 * phase + 0.4))
        h = base + cfg.noise_g * rng.standard_normal(n)
        v = vert + cfg.noise_g * rng.standard_normal(n)
        if sev > 0 and cfg.fault.amplitude_g > 0:
            imp = self._impulses(t0, n, fs, fr, sev)
            h += imp
            v += 0.6 * imp
        samples = np.column_stack([h, v])
        block = WaveformBlock(f"{cfg.asset}.de_accel", fs, ("h", "v"),
                              self.start + self._vib_n / fs, samples, unit="g",
                              metadata={"simulated": True})
        self._vib_n += n
        return block

    def _impulses(self, t0: float, n: int, fs: float, fr: float, sev: float) -> np.ndarray:
        cfg, rng = self.cfg, self.rng
        freqs = defect_frequencies(cfg.bearing, fr)
        f_def = freqs["bpfo"] if cfg.fault.kind == "outer_race" else freqs["bpfi"]
        out = np.zeros(n)
        ring_len = min(n, int(fs * 0.004))
        tr = np.arange(ring_len) / fs
        ring = np.exp(-tr * 900.0) * np.sin(2 * math.pi * cfg.resonance_hz * tr)
        t_end = t0 + n / fs
        if self._next_impulse < t0:
            self._next_impulse = t0
        while self._next_impulse < t_end:
            ti = self._next_impulse
            amp = sev * cfg.fault.amplitude_g * (0.8 + 0.4 * rng.random())
            if cfg.fault.kind == "inner_race":
                amp *= 0.6 + 0.4 * math.cos(2 * math.pi * fr * ti)
            k = int((ti - t0) * fs)
            m = min(ring_len, n - k)
            out[k:k + m] += amp * ring[:m]
            # 1-2 % slip between impulses, as in real bearings
            self._next_impulse = ti + (1.0 + 0.015 * rng.standard_normal()) / f_def
        return out

    def _microphone(self, t0: float, dt: float, fr: float, sev: float) -> WaveformBlock:
        cfg, rng = self.cfg, self.rng
        fs = cfg.microphone_rate
        n = round((t0 + dt) * fs) - self._mic_n
        bpf = 6 * fr  # six-vane impeller
        phase = self._mic_phase + 2 * math.pi * bpf * np.arange(n) / fs
        self._mic_phase = float((self._mic_phase + 2 * math.pi * bpf * n / fs) % (2 * math.pi))
        x = 0.05 * np.sin(phase) + 0.02 * np.sin(2 * phase)
        x += 0.015 * rng.standard_normal(n)
        if sev > 0:
            clicks = (rng.random(n) < sev * 0.002).astype(float)
            x += 0.2 * sev * np.convolve(clicks, np.hanning(24), mode="same")
        block = WaveformBlock(f"{cfg.asset}.mic", fs, ("mic",), self.start + self._mic_n / fs,
                              x[:, None], unit="Pa", metadata={"simulated": True})
        self._mic_n += n
        return block

    def _process(self, t: float, fr: float, sev: float) -> list[Reading]:
        cfg, rng = self.cfg, self.rng
        ts = self.start + t
        target = 52.0 + 12.0 * sev
        self._temp += 0.02 * (target - self._temp) + 0.03 * rng.standard_normal()
        pressure = 4.2 + 0.05 * math.sin(2 * math.pi * t / 300.0) + 0.01 * rng.standard_normal()
        current = 12.5 + 0.6 * sev + 0.05 * rng.standard_normal()
        a = cfg.asset
        meta = {"source": "simulator"}
        return [
            Reading(f"{a}.bearing_temp", "temperature", round(self._temp, 3), "degC", ts, 1.0,
                    meta),
            Reading(f"{a}.discharge_pressure", "pressure", round(pressure, 4), "bar", ts, 1.0,
                    meta),
            Reading(f"{a}.motor_current", "current", round(current, 3), "A", ts, 1.0, meta),
            Reading(f"{a}.shaft_speed", "speed", round(fr * 60.0, 2), "rpm", ts, 1.0, meta),
        ]


class SimulatorDriver:
    """Paces :class:`SimulatedPlant` to wall-clock time (a streaming source, like a sound card)."""

    streaming = True

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._health = DriverHealth(cfg.name, "simulator")
        self._plant: SimulatedPlant | None = None

    async def open(self) -> None:
        if self._plant is None:  # the simulated plant keeps running across reconnects
            start = parse_ts(self.cfg.start_time) if self.cfg.start_time else time.time()
            self._plant = SimulatedPlant(self.cfg, start)
        self._health.connected = True

    async def read(self) -> DriverOutput:
        plant = self._plant
        if plant is None:
            raise DriverError("simulator read() before open()")
        if self.cfg.pace == "realtime":
            due = plant.start + plant.t + float(self.cfg.block)
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # stay cooperative when running flat out
        out = plant.next_block()
        self._health.ok(len(out))
        self._health.detail["fault_severity"] = round(plant.severity(plant.t), 3)
        return out

    async def close(self) -> None:
        self._health.connected = False

    def health(self) -> DriverHealth:
        return self._health


def create(cfg: Config) -> SimulatorDriver:
    return SimulatorDriver(cfg)
