"""The configured OPC-UA nodes as session items, grouped, and the requests built from them.

Pure data and request builders (no client, no I/O) for :mod:`edge_agent.drivers.opcua_session`:
one :class:`Item` per configured node (plus a hidden item for each waveform's sample-rate node),
subscriptions grouped by publishing interval (:class:`SubGroup`), polled nodes grouped by poll
interval (:class:`PollGroup`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asyncua import ua

from edge_agent.drivers.opcua_batchsub import BatchSubscription
from edge_agent.drivers.opcua_convert import NodeSpec
from edge_agent.records import Sensor

if TYPE_CHECKING:
    from edge_agent.drivers.opcua import Config, Node

# What a request to the server may raise when the connection or the server is the problem.
UA_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ua.UaError)


@dataclass(eq=False)
class Item:
    node: Node
    spec: NodeSpec
    nodeid: ua.NodeId | None = None
    rate: float | None = None          # waveform items: current sample rate
    rate_for: Item | None = None       # hidden sample-rate items: the waveform they serve
    notifications: int = 0             # values delivered in this session
    sensor: Sensor | None = None       # scalar items: ids and metadata of a Good value's row


@dataclass(eq=False)
class SubGroup:
    interval: float                    # publishing interval, seconds
    items: list[Item]
    sub: BatchSubscription | None = None
    handles: dict[int, Item] = field(default_factory=dict)
    missing: list[Item] = field(default_factory=list)
    created: float = 0.0               # monotonic, of the last (re)build
    rebuilds: int = 0                  # consecutive rebuilds that brought nothing yet
    force_rebuild: bool = False
    next_retry: float = 0.0


@dataclass(eq=False)
class PollGroup:
    interval: float
    items: list[Item]


def items_of(cfg: Config) -> list[Item]:
    items: list[Item] = []
    for n in cfg.nodes:
        spec = NodeSpec(n.sensor_id, n.sensor_type, n.unit, n.node_id or n.browse_path,
                        n.waveform, tuple(n.channels), n.timestamp_at)
        it = Item(n, spec, rate=n.sample_rate)
        items.append(it)
        if n.waveform and n.sample_rate_node:
            rate_node = type(n)(sensor_id=f"{n.sensor_id}.rate", node_id=n.sample_rate_node,
                                mode=n.mode, publishing_interval=n.publishing_interval,
                                poll_interval=n.poll_interval)
            items.append(Item(rate_node, NodeSpec(rate_node.sensor_id, "sample_rate", "Hz",
                                                  n.sample_rate_node), rate_for=it))
    return items


def group_key(it: Item) -> tuple[str, float]:
    """(mode, interval): items sharing it share one subscription or one Read request."""
    n = it.node
    return n.mode, float(n.publishing_interval if n.mode == "subscription" else n.poll_interval)


FASTEST_SAMPLING = 0.01      # s: what "sampling_interval = 0" (the server's fastest) is taken as
AUTO_QUEUE_MAX = 1000


def queue_size_of(n: Node) -> int:
    """The node's server-side queue: as configured, or enough for every sample of one
    publishing interval with half as much again for jitter (samples and publishes are not
    aligned, and a busy server publishes late), plus one; at least 3."""
    if n.queue_size is not None:
        return int(n.queue_size)
    if n.mode != "subscription":
        return 1
    publishing = float(n.publishing_interval)
    sampling = publishing if n.sampling_interval is None else float(n.sampling_interval)
    ratio = publishing / max(sampling, FASTEST_SAMPLING)
    return min(AUTO_QUEUE_MAX, max(3, math.ceil(1.5 * ratio) + 1))


def monitor_request(it: Item, handle: int) -> ua.MonitoredItemCreateRequest:
    n = it.node
    params = ua.MonitoringParameters()
    params.ClientHandle = handle
    sampling = n.publishing_interval if n.sampling_interval is None else n.sampling_interval
    params.SamplingInterval = float(sampling) * 1000.0
    params.QueueSize = queue_size_of(n)
    params.DiscardOldest = True
    if n.deadband != "none":
        params.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=1 if n.deadband == "absolute" else 2,
            DeadbandValue=float(n.deadband_value))
    rv = ua.ReadValueId()
    rv.NodeId = it.nodeid
    rv.AttributeId = ua.AttributeIds.Value
    mir = ua.MonitoredItemCreateRequest()
    mir.ItemToMonitor = rv
    mir.MonitoringMode = ua.MonitoringMode.Reporting
    mir.RequestedParameters = params
    return mir


def subscription_params(interval: float, keepalive_count: int) -> ua.CreateSubscriptionParameters:
    ms = interval * 1000.0
    params = ua.CreateSubscriptionParameters()
    params.RequestedPublishingInterval = ms
    params.RequestedMaxKeepAliveCount = keepalive_count
    # The server drops a subscription nobody publishes for after lifetime x interval:
    # at least 3 keep-alives (spec) and about two minutes, so a crashed agent's leftovers
    # do not pile up in a PLC with few subscription slots.
    params.RequestedLifetimeCount = max(3 * keepalive_count, math.ceil(120_000 / ms))
    params.MaxNotificationsPerPublish = 0
    params.PublishingEnabled = True
    return params


def read_request(items: list[Item]) -> ua.ReadParameters:
    """One Read of every item's Value, both timestamps, never from a cache."""
    params = ua.ReadParameters()
    params.MaxAge = 0
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    for it in items:
        rv = ua.ReadValueId()
        rv.NodeId = it.nodeid
        rv.AttributeId = ua.AttributeIds.Value
        params.NodesToRead.append(rv)
    return params
