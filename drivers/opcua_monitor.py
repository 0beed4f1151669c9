"""Node resolution (browse paths, ``nsu=`` namespace URIs), monitored-item creation and reads
that isolate a node the server refuses, and the warning about waveform nodes that send (almost)
nothing — helpers of :mod:`edge_agent.drivers.opcua_session`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import Subscription

from edge_agent.drivers.base import DriverHealth
from edge_agent.drivers.opcua_convert import status_name
from edge_agent.drivers.opcua_items import UA_ERRORS, Item, SubGroup, read_request

log = logging.getLogger(__name__)

QUIET_PUBLISHES = 20     # a waveform node with <= 1 notification after this many publishing
QUIET_MIN_S = 2.0        # intervals (and at least this long) is warned about, once
UNANSWERED_GIVE_UP = 3   # single-item requests left unanswered before blaming the server


async def resolve_nodes(client: Client, items: list[Item], health: DriverHealth
                        ) -> dict[Item, str]:
    """Set each item's ``nodeid`` from its browse path or node id; the ones that cannot be
    resolved, with the reason. ``nsu=<uri>;...`` ids are resolved through the server's
    namespace array (read once per call: indices may change on every server restart)."""
    missing: dict[Item, str] = {}
    paths = [it for it in items if it.node.browse_path]
    if paths:
        root = ua.NodeId(ua.Int32(ua.ObjectIds.RootFolder))
        results = await client.translate_browsepaths(root, [it.node.browse_path for it in paths])
        for it, res in zip(paths, results, strict=True):
            if res.StatusCode.is_good() and res.Targets:
                it.nodeid = res.Targets[0].TargetId
            else:
                missing[it] = f"browse path not found ({status_name(res.StatusCode)})"
    namespaces: list[str] | None = None
    for it in items:
        if not it.node.node_id:
            continue
        try:
            nodeid = ua.NodeId.from_string(it.node.node_id)
        except ua.UaStringParsingError:
            missing[it] = f"invalid NodeId {it.node.node_id!r}"
            continue
        uri = getattr(nodeid, "NamespaceUri", None)
        if uri:
            if namespaces is None:
                namespaces = list(await client.get_namespace_array())
                health.detail["namespaces"] = len(namespaces)
            if uri not in namespaces:
                missing[it] = f"namespace {uri!r} is not in the server's namespace array"
                continue
            nodeid = ua.NodeId(nodeid.Identifier, ua.Int16(namespaces.index(uri)),
                               nodeid.NodeIdType)
        it.nodeid = nodeid
    return missing


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


async def create_each(sub: Subscription, mirs: list[ua.MonitoredItemCreateRequest],
                      limit_s: float) -> list[int | ua.StatusCode | str]:
    """Each item alone, one at a time (many servers serve a session's requests in order, so a
    request sent while the server still chokes on another would time out with it). Raises
    :class:`TimeoutError` when the first :data:`UNANSWERED_GIVE_UP` requests all go
    unanswered: then the server, not a node, is the problem."""
    out: list[int | ua.StatusCode | str] = []
    answered = False
    for mir in mirs:
        res = await create_one(sub, mir, limit_s)
        out.append(res)
        if isinstance(res, str) and res.startswith("no answer"):
            if not answered and len(out) >= UNANSWERED_GIVE_UP:
                raise TimeoutError(f"the server answered none of {len(out)} monitored-item "
                                   "requests")
        else:
            answered = True
    return out


async def read_each(client: Client, items: list[Item], limit_s: float) -> dict[Item, str]:
    """Read each item alone; the ones the server refuses (a service fault), with the reason.
    Stops at the first request that fails otherwise (the connection, not a node)."""
    refused: dict[Item, str] = {}
    for it in items:
        try:
            async with asyncio.timeout(limit_s):
                await client.uaclient.read(read_request([it]))
        except ua.UaStatusCodeError as exc:
            refused[it] = f"refused by the server ({status_name(ua.StatusCode(exc.code))})"
        except UA_ERRORS:
            return {}
    return refused


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
