"""Bring a source's blocks to the pipeline's analysis rate and sample unit before windowing.

* Rate: a pipeline may set its analysis rate (``sample_rate`` in ``[[pipelines]]``); a faster
  source is resampled (:class:`~edge_agent.models.dsp.resample.StreamResampler`, polyphase and
  anti-aliased). A slower one cannot be analysed at that rate (upsampling adds no band): the
  block is refused with the reason. Without an analysis rate the source's rate is used, and a
  model trained at another rate is refused by the contract check.
* Unit: vibration samples in ``g`` are converted to ``m/s2`` and back, to the unit the features
  are configured for (``accel_unit``, part of the contract). Any other non-empty unit on a
  vibration pipeline is refused; an empty unit (a driver that does not know it) is taken to be
  the configured one.
"""

from __future__ import annotations

import dataclasses

from edge_agent.models.dsp.features import G
from edge_agent.models.dsp.resample import StreamResampler
from edge_agent.records import WaveformBlock

ACCEL_UNITS = {"g": "g", "m/s2": "m/s2", "m/s^2": "m/s2", "m/s²": "m/s2", "m s-2": "m/s2",
               "m/s/s": "m/s2"}


class Conformer:
    def __init__(self, analysis_rate: float | None, accel_unit: str | None) -> None:
        self.analysis_rate = analysis_rate
        self.accel_unit = accel_unit          # None: not a vibration pipeline
        self._resampler: StreamResampler | None = None

    def push(self, block: WaveformBlock) -> tuple[WaveformBlock | None, str | None]:
        """``(block at the analysis rate and unit or None, why it was refused or None)``; a
        resampler may hold back the last samples (None, None)."""
        if self.accel_unit is not None and block.unit.strip():
            have = ACCEL_UNITS.get(block.unit.strip().lower())
            if have is None:
                return None, (f"samples in {block.unit!r}, the vibration features are "
                              f"computed from acceleration in {self.accel_unit!r}")
            if have != self.accel_unit:
                k = G if have == "g" else 1.0 / G
                block = dataclasses.replace(block, samples=block.samples * k,
                                            unit=self.accel_unit)
        rate = self.analysis_rate
        if rate is None or block.sample_rate == rate:
            return block, None
        if block.sample_rate < rate:
            return None, (f"source at {block.sample_rate:g} Hz is slower than the pipeline's "
                          f"analysis rate {rate:g} Hz")
        rs = self._resampler
        if rs is None or rs.in_rate != block.sample_rate:
            try:
                rs = self._resampler = StreamResampler(block.sample_rate, rate)
            except ValueError as exc:
                return None, str(exc)
        return rs.push(block), None
