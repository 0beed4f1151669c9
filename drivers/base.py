"""The one small protocol every source implements, and the health it reports.

A driver never sees the agent, the buffer or other drivers. The agent calls:

* ``await open()`` — connect (build a *fresh* client every time); raise on failure.
* ``await read()`` — return the next records. *Polled* drivers (``streaming = False``) return
  what one poll yields and the agent calls them on their ``poll_interval``; *streaming* drivers
  (``streaming = True``) wait until something arrives. Raise :class:`DriverDisconnected` when the
  connection is lost: the agent closes the driver, backs off and opens it again.
* ``await close()`` — release everything; must be safe to call twice or after a failed open.
* ``health()`` — a snapshot for the status page and metrics (no reference to the agent needed:
  the agent pulls it).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from edge_agent.errors import DriverDisconnected as DriverDisconnected
from edge_agent.errors import DriverError as DriverError
from edge_agent.records import Reading, ReadingBlock, WaveformBlock

DriverOutput = list[Reading | ReadingBlock | WaveformBlock]


@dataclass
class DriverHealth:
    """Counters a driver keeps about itself; :meth:`snapshot` is what the agent reads."""

    name: str
    kind: str
    connected: bool = False
    last_read: float | None = None        # wall time of the last successful read
    reads: int = 0                        # successful reads (polls or batches)
    values: int = 0                       # values delivered
    errors: Counter[str] = field(default_factory=Counter)
    bad_points: dict[str, str] = field(default_factory=dict)   # point -> reason
    detail: dict[str, object] = field(default_factory=dict)
    _rate_t0: float = field(default_factory=time.monotonic)
    _rate_n0: int = 0

    def ok(self, n_values: int) -> None:
        self.last_read = time.time()
        self.reads += 1
        self.values += n_values

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def snapshot(self) -> dict[str, object]:
        t = time.monotonic()
        dt = t - self._rate_t0
        rate = (self.reads - self._rate_n0) / dt if dt > 0 else 0.0
        if dt > 10.0:
            self._rate_t0, self._rate_n0 = t, self.reads
        return {
            "name": self.name,
            "kind": self.kind,
            "connected": self.connected,
            "last_read": self.last_read,
            "reads": self.reads,
            "values": self.values,
            "reads_per_s": round(rate, 3),
            "errors": dict(self.errors),
            "bad_points": dict(self.bad_points),
            **self.detail,
        }


@runtime_checkable
class Driver(Protocol):
    """What the agent runs. A driver may also set ``recorded = True`` (replay): its data exists
    already, so the agent makes it wait for room in the waveform queue instead of dropping."""

    name: str
    streaming: bool

    async def open(self) -> None: ...

    async def read(self) -> DriverOutput: ...

    async def close(self) -> None: ...

    def health(self) -> DriverHealth: ...
