"""Delivery transactions between the buffer and its sinks: batches out, typed outcomes back.

The buffer is the single source of truth. Each named sink (the uploader, the MQTT publisher)
has its own cursor in the buffer: it is handed :class:`Batch` es of the tables it consumes, in
commit order, and settles each one with exactly one :data:`Outcome`:

* :class:`Delivered` — the peer has it; the buffer marks the batch delivered durably and frees
  rows no other sink still needs.
* :class:`RetryAfter` — transient; the same batch (same key, same members) is offered again
  after the sink's backoff, or at least ``after`` seconds.
* :class:`Split` — too big or mixed with rows the peer already has (413, 409): the buffer
  replaces it by two new batches with new keys, recorded before either is sent.
* :class:`Rejected` — this batch can never be accepted as is: it is quarantined with the
  reason, an event is raised, and the sink goes on with the next batch.

Outcomes are values, never exceptions (in the spirit of Vector's ``EventStatus`` and Telegraf's
buffer transactions). A sink never touches SQLite; it only implements :class:`Sink`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "Batch",
    "Delivered",
    "Outcome",
    "PreparingSink",
    "Rejected",
    "RetryAfter",
    "Sink",
    "Split",
    "Table",
]

Table = Literal["events", "features", "readings"]


@dataclass(frozen=True)
class Batch:
    """One delivery transaction of one sink: its key and exact members, in commit order.

    ``events`` and ``features`` hold each row's contract JSON object as text; ``readings``
    holds comma-joined contract JSON objects (one string per stored chunk slice; wrap in
    ``[`` ``]`` to parse) and ``n_readings`` counts them. The key (``Idempotency-Key``) and the
    members are committed before the batch is first handed out and are identical on every
    retry, across restarts."""

    sink: str
    id: int
    key: str
    attempts: int
    events: Sequence[str] = ()
    features: Sequence[str] = ()
    readings: Sequence[str] = ()
    n_readings: int = 0

    @property
    def n_rows(self) -> int:
        return len(self.events) + len(self.features) + self.n_readings


@dataclass(frozen=True)
class Delivered:
    """The peer has every row of the batch. ``note``: e.g. accepted, duplicate, conflict."""

    note: str = "accepted"
    status: str = ""


@dataclass(frozen=True)
class RetryAfter:
    """Transient: offer the same batch again later.

    ``kind`` names the failure for counters and logs (``timeout``, ``connection``, ``http_5xx``,
    ``auth``, ``bad_body``, ``broker_down`` …); ``after`` is a floor the peer asked for
    (``Retry-After``) — the sink's backoff still applies; ``slow`` asks for the slow retry
    interval (credentials that may be rotated)."""

    kind: str
    detail: str = ""
    after: float | None = None
    slow: bool = False
    status: str = ""


@dataclass(frozen=True)
class Split:
    """Replace the batch by two halves with new keys (413; 409 on a multi-row batch)."""

    reason: str = ""
    status: str = ""


@dataclass(frozen=True)
class Rejected:
    """The batch can never be accepted as is: quarantine it with ``reason``."""

    reason: str
    status: str = ""
    body_hint: str = field(default="", repr=False)


Outcome = Delivered | RetryAfter | Split | Rejected


@runtime_checkable
class Sink(Protocol):
    """What the buffer's delivery loop drives. Implementations: the HTTP uploader, MQTT."""

    name: str
    tables: frozenset[Table]

    async def deliver(self, batch: Batch) -> Outcome:
        """Send ``batch`` and say what became of it. Never raises for peer or network
        failures: those are :class:`RetryAfter`."""
        ...

    async def close(self) -> None:
        """Release connections (at shutdown; the sink may be delivered to again after)."""
        ...


@runtime_checkable
class PreparingSink(Sink, Protocol):
    """A sink that does costly per-batch work (encoding, compression) ahead of sending: the
    delivery loop calls :meth:`prepare` for the next batch while the current one is in
    flight, so that work overlaps with the peer's."""

    async def prepare(self, batch: Batch) -> None:
        ...
