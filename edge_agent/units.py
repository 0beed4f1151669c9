"""Config value units: durations (``"250ms"``, ``"5s"``, ``"2h"``) and byte sizes (``"512kB"``,
``"64MiB"``), as pydantic-annotated types. Re-exported by :mod:`edge_agent.settings`."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DUR_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
              "d": 86400.0}
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_duration(raw: object) -> float:
    """Seconds from ``"250ms"``, ``"1.5s"``, ``"10m"``, ``"2h"``, ``"1d"`` or a number >= 0."""
    if isinstance(raw, bool):
        raise ValueError('expected a duration such as "250ms" or "5s"')
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or raw < 0:
            raise ValueError(f"{raw!r} is not a duration (a finite number of seconds >= 0)")
        return float(raw)
    if isinstance(raw, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]+)\s*", raw)
        if m and m.group(2) in _DUR_UNITS:
            return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    raise ValueError(f'cannot read {show(raw)} as a duration (e.g. "250ms", "5s", "2h")')


def parse_bytes(raw: object) -> int:
    """Bytes from ``"2GiB"``, ``"512kB"``, ``"10MB"`` or a whole number >= 0."""
    if isinstance(raw, bool):
        raise ValueError('expected a size such as "512MiB"')
    if isinstance(raw, int):
        if raw < 0:
            raise ValueError(f"{raw!r} is not a size (bytes >= 0)")
        return raw
    if isinstance(raw, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]+)\s*", raw)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f'cannot read {show(raw)} as a size (e.g. "512MiB", "2GiB")')


def show(value: Any) -> str:
    """``repr`` as the TOML file wrote it (arrays were made tuples for strict validation)."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
