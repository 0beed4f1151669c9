"""Monitored-item creation that isolates a node the server refuses, and the warning about
waveform nodes that send (almost) nothing — helpers of :mod:`edge_agent.drivers.opcua_session`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asyncua import ua
from asyncua.common.subscription import Subscription

from edge_agent.drivers.base import DriverHealth
from edge_agent.drivers.opcua_convert import status_name
from edge_agent.drivers.opcua_items import UA_ERRORS, SubGroup

log = logging.getLogger("edge_agent.drivers.opcua")

QUIET_PUBLISHES = 20     # a waveform node with <= 1 notification after this many publishing
QUIET_MIN_S = 2.0        # intervals (and at least this long) is warned about, once


async def create_items(sub: Subscription, mirs: list[ua.MonitoredItemCreateRequest],
                       limit_s: float) -> list[Any]:
    """One CreateMonitoredItems request: a handle or a status per item; raises when the
    server refuses (or leaves unanswered) the request as a whole."""
    async with asyncio.timeout(limit_s):
        return list(await sub.create_monitored_items(mirs))


async def create_one(sub: Subscription, mir: ua.MonitoredItemCreateRequest, limit_s: float
                     ) -> int | ua.StatusCode | str:
    """One item alone: its handle, the server's status, or why the request failed."""
    try:
        res: int | ua.StatusCode = (await create_items(sub, [mir], limit_s))[0]
        return res
    except ua.UaStatusCodeError as exc:
        return f"refused by the server ({status_name(ua.StatusCode(exc.code))})"
    except TimeoutError:
        return f"no answer from the server within {limit_s:g}s"
    except UA_ERRORS as exc:
        return f"request failed: {exc!r}"


def warn_quiet_waveforms(driver: str, health: DriverHealth, g: SubGroup, now: float) -> None:
    """Warn once per node (per driver, across reconnects) about a waveform node that sent at
    most one notification: no window can ever be cut from it, and nothing else would say so."""
    if now - g.created < max(QUIET_PUBLISHES * g.interval, QUIET_MIN_S):
        return
    warned = health.detail.setdefault("quiet_waveforms", [])
    assert isinstance(warned, list)
    for it in g.items:
        if not it.spec.waveform or it.notifications > 1 or it.spec.sensor_id in warned:
            continue
        warned.append(it.spec.sensor_id)
        sampling = it.node.sampling_interval
        hint = ("sampling_interval 0 lets the server sample at its own rate; set it to the "
                "block period" if sampling == 0 else "check that the array node is updated")
        log.warning("opcua waveform node sends almost no notifications",
                    extra={"driver": driver, "sensor_id": it.spec.sensor_id,
                           "notifications": it.notifications,
                           "seconds": round(now - g.created, 1),
                           "sampling_interval_s": None if sampling is None else float(sampling),
                           "hint": hint})
