"""Sound-card driver config: the device, the ring and each channel's calibration.

Per-channel calibration turns full-scale samples into units:

* ``raw`` — full-scale fraction (unit ``FS``);
* ``dbfs`` — also full-scale fraction (``FS``), documented as dBFS-referenced: a window's level
  is ``20 log10(rms * sqrt(2))`` dBFS (a full-scale sine is 0 dBFS);
* ``mic_pa`` — microphone in Pa: ``volts / (sensitivity mV/Pa / 1000)``;
* ``iepe`` — IEPE accelerometer through the interface: ``volts / (sensitivity mV/g / 1000)``
  in ``g``, times 9.80665 when ``unit = "m/s2"``;

where ``volts = sample * full_scale_volts / 10**(gain_db / 20)`` (the interface's input voltage
at 0 dBFS and its preamp gain).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.settings import Model

G = 9.80665


class Channel(Model):
    """One input channel and its calibration."""

    name: str = Field(min_length=1)
    calibration: Literal["raw", "dbfs", "mic_pa", "iepe"] = "raw"
    sensitivity: float | None = Field(None, gt=0)       # mV/Pa (mic) or mV/g (iepe)
    full_scale_volts: float | None = Field(None, gt=0)  # input volts at 0 dBFS
    gain_db: float = 0.0
    unit: Literal["g", "m/s2"] = "g"                      # iepe output unit

    def problems(self) -> list[tuple[str, str]]:
        if self.calibration in ("mic_pa", "iepe"):
            return [(k, f"is required for calibration {self.calibration!r}")
                    for k in ("sensitivity", "full_scale_volts") if getattr(self, k) is None]
        return []

    def scale_and_unit(self) -> tuple[float, str]:
        """Multiplier from full-scale samples to the calibrated unit, and that unit."""
        if self.calibration in ("raw", "dbfs") or self.sensitivity is None \
                or self.full_scale_volts is None:
            return 1.0, "FS"
        volts = self.full_scale_volts / 10.0 ** (self.gain_db / 20.0)
        per = volts / (self.sensitivity / 1000.0)
        if self.calibration == "mic_pa":
            return per, "Pa"
        return (per * G, "m/s2") if self.unit == "m/s2" else (per, "g")


class Config(Model):
    kind: Literal["soundcard"]
    name: str = Field(min_length=1)
    channels: tuple[Channel, ...] = Field(min_length=1)
    device: str | None = None            # a name (substring) or an index; None: the default
    sample_rate: float = Field(48000.0, gt=0)
    block_size: int = Field(2048, ge=16, le=1 << 20)   # frames per PortAudio callback
    buffer_seconds: float = Field(4.0, gt=0, le=600)
    latency: Literal["low", "high"] = "high"
    source_id: str | None = None         # default: the driver name
    stall_timeout: float = Field(5.0, gt=0)   # no audio for this long: disconnected

    def waveform_sources(self) -> tuple[str, ...]:
        return (self.source_id or self.name,)

    def problems(self) -> list[tuple[str, str]]:
        names = [c.name for c in self.channels]
        out: list[tuple[str, str]] = []
        if len(set(names)) != len(names):
            out.append(("channels", "names must be distinct"))
        if self.buffer_seconds * self.sample_rate < 4 * self.block_size:
            out.append(("buffer_seconds", "must hold at least 4 blocks"))
        units = {c.scale_and_unit()[1] for c in self.channels}
        if len(units) > 1:
            out.append(("channels", f"one block has one unit; got {sorted(units)} — use one "
                                    "driver per kind of sensor"))
        return out


def level_dbfs(samples: npt.ArrayLike) -> float:
    """Level of full-scale samples in dBFS (full-scale sine = 0 dBFS); -inf for silence."""
    x = np.asarray(samples, dtype=np.float64)
    rms = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return 20.0 * math.log10(rms * math.sqrt(2.0)) if rms > 0 else -math.inf
