"""Per-unit schedule of the Modbus driver: a unit that stops answering must not starve the
units that still answer on the same connection.

A unit (device) that answered nothing in a poll while another unit on the connection still
answers is probed — one request — with growing gaps, from ten request timeouts (at least its
poll interval) up to ``silent_unit_probe``; its other points are reported quality 0 without
being asked. When every unit is silent the connection itself is suspect: the normal cadence
goes on until :data:`SILENT_POLLS_DEAD` silent polls make the driver reconnect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edge_agent.backoff import Backoff
from edge_agent.drivers.modbus_codec import Block, PointSpec
from edge_agent.records import Sensor

if TYPE_CHECKING:
    from edge_agent.drivers.modbus import Device

__all__ = ["SILENT_POLLS_DEAD", "UnitState", "schedule"]

log = logging.getLogger(__name__)

SILENT_POLLS_DEAD = 2   # polls in a row in which no unit answered: the connection is dead
PROBE_REQUESTS = 10     # first probe gap, in request timeouts


@dataclass
class UnitState:
    device: Device
    specs: list[PointSpec]
    blocks: list[Block]
    interval: float
    next_due: float = 0.0
    silent: int = 0              # consecutive polls in which the unit answered nothing
    sensors: list[Sensor] = field(default_factory=list)  # per point: ids and static metadata
    fast: list[str | None] = field(default_factory=list)  # per point: codec.fast_format


def schedule(units: list[UnitState], d: UnitState, answered: int, now: float, slack: float,
             *, driver: str, request_s: float, probe_max: float) -> None:
    """Set ``d.next_due`` after a poll of ``d`` in which ``answered`` requests were answered."""
    name = d.device.name
    if answered:
        if d.silent:
            log.info("modbus unit answers again",
                     extra={"driver": driver, "device": name, "silent_polls": d.silent})
        d.silent = 0
        d.next_due = max(d.next_due + d.interval, now + d.interval - slack)
        return
    d.silent += 1
    if any(x.silent == 0 for x in units if x is not d):
        base = max(d.interval, PROBE_REQUESTS * request_s)
        probe = Backoff(base, max(base, probe_max), jitter=0.0)
        d.next_due = now + probe.ceiling(d.silent - 1)
    else:
        d.next_due = max(d.next_due + d.interval, now + d.interval - slack)
    if d.silent == 1:
        log.warning("modbus unit not answering; probing it less often",
                    extra={"driver": driver, "device": name, "unit_id": d.device.unit_id})


class _QuietTimeouts(logging.Filter):
    """pymodbus logs every unanswered request at error level; the driver reports them (quality
    0 with the reason, health errors, one warning per silent unit), so they go to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and "No response received" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_QUIET = _QuietTimeouts()
if _QUIET not in logging.getLogger("pymodbus.logging").filters:
    logging.getLogger("pymodbus.logging").addFilter(_QUIET)
