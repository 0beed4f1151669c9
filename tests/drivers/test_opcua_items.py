"""The OPC-UA session's items and request builders, without a server."""

from __future__ import annotations

from asyncua import ua

from edge_agent.drivers.opcua import Config
from edge_agent.drivers.opcua_convert import group_by
from edge_agent.drivers.opcua_items import (
    group_key,
    items_of,
    monitor_request,
    read_request,
    subscription_params,
)
from edge_agent.settings import parse


def cfg() -> Config:
    return parse(Config, {"kind": "opcua", "name": "ua", "endpoint": "opc.tcp://h:4840/",
                          "nodes": [
        {"sensor_id": "t", "node_id": "ns=2;s=T", "publishing_interval": "250ms",
         "sampling_interval": "100ms", "queue_size": 4, "deadband": "percent",
         "deadband_value": 0.5},
        {"sensor_id": "p", "node_id": "ns=2;s=P", "mode": "polling", "poll_interval": "2s"},
        {"sensor_id": "q", "node_id": "ns=2;s=Q", "mode": "polling", "poll_interval": "2s"},
        {"sensor_id": "w", "node_id": "ns=2;s=W", "waveform": True, "channels": ["x", "y"],
         "sample_rate_node": "ns=2;s=W.Rate", "publishing_interval": "250ms"}]})


def test_items_groups_and_hidden_rate_items() -> None:
    items = items_of(cfg())
    assert [it.spec.sensor_id for it in items] == ["t", "p", "q", "w", "w.rate"]
    w, rate = items[3], items[4]
    assert rate.rate_for is w and rate.node.node_id == "ns=2;s=W.Rate" and w.rate is None
    assert w.spec.waveform and w.spec.channels == ("x", "y")
    groups = group_by(items, group_key)
    assert {k: [it.spec.sensor_id for it in v] for k, v in groups.items()} == {
        ("subscription", 0.25): ["t", "w", "w.rate"], ("polling", 2.0): ["p", "q"]}


def test_monitor_read_and_subscription_requests() -> None:
    t = items_of(cfg())[0]
    t.nodeid = ua.NodeId.from_string("ns=2;s=T")
    mir = monitor_request(t, 7)
    p = mir.RequestedParameters
    assert (p.ClientHandle, p.SamplingInterval, p.QueueSize, p.DiscardOldest) == (7, 100.0, 4,
                                                                                 True)
    assert p.Filter.DeadbandType == 2 and p.Filter.DeadbandValue == 0.5  # percent
    assert mir.ItemToMonitor.NodeId == t.nodeid
    assert mir.MonitoringMode == ua.MonitoringMode.Reporting
    rp = read_request([t, t])
    assert rp.MaxAge == 0 and len(rp.NodesToRead) == 2
    assert rp.TimestampsToReturn == ua.TimestampsToReturn.Both
    fast = subscription_params(0.1, 10)
    assert fast.RequestedLifetimeCount == 1200  # about two minutes of 100 ms intervals
    slow = subscription_params(60.0, 10)
    assert slow.RequestedLifetimeCount == 30    # never below 3 keep-alives
    assert fast.RequestedPublishingInterval == 100.0 and fast.RequestedMaxKeepAliveCount == 10
