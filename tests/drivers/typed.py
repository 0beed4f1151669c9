"""Typed views of what drivers hand out, so tests need no `type: ignore` to use them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_agent.drivers.base import Driver
from edge_agent.records import Reading, WaveformBlock, expand


async def blocks(driver: Driver) -> list[WaveformBlock]:
    """One `read()` of a waveform driver, checked to hold only waveform blocks."""
    out = await driver.read()
    assert all(isinstance(b, WaveformBlock) for b in out), out
    return [b for b in out if isinstance(b, WaveformBlock)]


async def readings(driver: Driver) -> list[Reading]:
    """One `read()` of a point driver (reading blocks expanded), checked to hold only
    readings."""
    out = expand(await driver.read())
    assert all(isinstance(r, Reading) for r in out), out
    return [r for r in out if isinstance(r, Reading)]


def num(snapshot: Mapping[str, object], key: str) -> float:
    """A numeric field of a health snapshot."""
    v = snapshot[key]
    assert isinstance(v, int | float), (key, v)
    return v


def sub(snapshot: Mapping[str, object], key: str) -> Mapping[str, Any]:
    """A nested map of a health snapshot (errors: counts, bad_points: reasons)."""
    v = snapshot[key]
    assert isinstance(v, dict), (key, v)
    return v
