"""The pieces every extractor shares: the :class:`Extractor` protocol and the window checks.

See :mod:`edge_agent.models.dsp.extract` for the feature layouts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.errors import FeatureError
from edge_agent.models.dsp.spectrum import scratch
from edge_agent.models.dsp.windowing import Window
from edge_agent.settings import Problems

F64 = npt.NDArray[np.float64]


class Extractor(Protocol):
    def names(self) -> tuple[str, ...]: ...

    def contract(self) -> dict[str, object]: ...

    def absent(self, shaft_rpm: float | None) -> tuple[str | None, tuple[int, ...]]: ...

    def __call__(self, window: Window, shaft_rpm: float | None = None) -> dict[str, float]: ...

    def batch(self, windows: Sequence[Window], shaft_rpm: float | None = None) -> F64: ...


class _Base:
    kind = ""

    def __init__(self, sample_rate: float, channels: tuple[str, ...], window: int,
                 hop: int) -> None:
        if not (sample_rate > 0 and math.isfinite(sample_rate)):
            raise ValueError(f"sample rate must be > 0, got {sample_rate}")
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels must be distinct and non-empty, got {channels}")
        if window < 2 or hop < 1:
            raise ValueError(f"window must be >= 2 and hop >= 1, got {window}, {hop}")
        self.sample_rate, self.channels = float(sample_rate), tuple(channels)
        self.window, self.hop = int(window), int(hop)
        self._names: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return self._names

    @staticmethod
    def _refuse(problems: Sequence[tuple[str, str]]) -> None:
        """:class:`Problems` (a ``ValueError``) naming every problem of the settings, if any."""
        if problems:
            raise Problems(problems)

    def absent(self, shaft_rpm: float | None) -> tuple[str | None, tuple[int, ...]]:
        """Feature columns that cannot be computed with ``shaft_rpm`` and why (none here)."""
        return None, ()

    def _check(self, windows: Sequence[Window]) -> None:
        for w in windows:
            if (w.samples.shape != (self.window, len(self.channels)) or
                    w.sample_rate != self.sample_rate or w.channels != self.channels):
                raise FeatureError(
                    f"{w.source_id}: window {w.samples.shape} @ {w.sample_rate} Hz {w.channels} "
                    f"does not match the extractor ({self.window}, {len(self.channels)}) @ "
                    f"{self.sample_rate} Hz {self.channels}")

    def _channel(self, windows: Sequence[Window], ci: int) -> F64:
        """One channel of the windows as a contiguous ``(n_windows, window)`` scratch array."""
        out: F64 = scratch("gather", len(windows), self.window)
        for i, w in enumerate(windows):
            out[i] = w.samples[:, ci]
        return out

    def _rows(self, windows: Sequence[Window], shaft_rpm: float | None) -> F64:
        raise NotImplementedError

    def batch(self, windows: Sequence[Window], shaft_rpm: float | None = None) -> F64:
        """One row per window; a row with any non-finite feature is all NaN (a bad window)."""
        with np.errstate(over="ignore", invalid="ignore"):  # such rows are marked bad below
            return _mark_bad(self._rows(windows, shaft_rpm))

    def __call__(self, window: Window, shaft_rpm: float | None = None) -> dict[str, float]:
        if not np.isfinite(window.samples).all():
            raise FeatureError(f"{window.source_id}: window at {window.start} holds NaN/Inf "
                               "samples")
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            row = self._rows([window], shaft_rpm)[0]
        if not np.isfinite(row).all():
            which = [n for n, v in zip(self._names, row, strict=True) if not math.isfinite(v)]
            raise FeatureError(f"{window.source_id}: window at {window.start} gives non-finite "
                               f"features ({', '.join(which[:4])}); samples out of range?")
        return dict(zip(self._names, (float(v) for v in row), strict=True))


def _mark_bad(rows: F64) -> F64:
    rows[~np.isfinite(rows).all(axis=1)] = np.nan
    return rows
