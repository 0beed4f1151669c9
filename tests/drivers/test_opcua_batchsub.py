"""BatchSubscription: each Publish's notifications handed over as one batch, in order, bounded
(oldest data changes dropped and counted, status changes kept), with asyncua's liveness fields
kept up to date for the session's watchdog."""

from __future__ import annotations

import asyncio
from datetime import UTC

from asyncua import Client, ua

from edge_agent.drivers.base import DriverHealth
from edge_agent.drivers.opcua import Config
from edge_agent.drivers.opcua_batchsub import BatchSubscription
from edge_agent.drivers.opcua_items import SubGroup, items_of
from edge_agent.drivers.opcua_session import Session
from edge_agent.records import expand
from edge_agent.settings import parse


def sub(cap: int = 100) -> BatchSubscription:
    # The client is not connected: the subscription only keeps a reference to its session.
    return BatchSubscription(Client("opc.tcp://127.0.0.1:4840"), ua.CreateSubscriptionParameters(),
                             cap)


def items(*handles: int) -> list[ua.MonitoredItemNotification]:
    return [ua.MonitoredItemNotification(ClientHandle=h, Value=ua.DataValue(ua.Variant(float(h))))
            for h in handles]


def publish(seq: int, *data: ua.DataChangeNotification | ua.StatusChangeNotification
            ) -> ua.PublishResult:
    msg = ua.NotificationMessage(SequenceNumber=seq, NotificationData=list(data))
    return ua.PublishResult(SubscriptionId=1, NotificationMessage=msg)


def handles(batch: list[ua.MonitoredItemNotification] | ua.StatusChangeNotification
            ) -> list[int] | str:
    if isinstance(batch, list):
        return [mi.ClientHandle for mi in batch]
    return ua.StatusCode(batch.Status.value).name


async def test_publishes_come_out_as_batches_in_arrival_order() -> None:
    s = sub()
    assert s.last_publish_at is None
    await s.publish_callback(publish(7, ua.DataChangeNotification(MonitoredItems=items(1, 2))))
    await s.publish_callback(publish(8, ua.StatusChangeNotification(
        Status=ua.StatusCode(ua.UInt32(ua.StatusCodes.BadTimeout)))))
    await s.publish_callback(publish(9, ua.DataChangeNotification(MonitoredItems=items(3))))
    assert s.last_publish_at is not None and s.last_sequence_number == 9
    got = await s.next()
    assert [handles(b) for b in got] == [[1, 2], "BadTimeout", [3]]
    assert [mi.Value.Value.Value for mi in got[0]] == [1.0, 2.0]


async def test_a_keep_alive_updates_liveness_and_queues_nothing() -> None:
    s = sub()
    await s.publish_callback(ua.PublishResult(
        SubscriptionId=1, NotificationMessage=ua.NotificationMessage(SequenceNumber=3)))
    assert s.last_publish_at is not None
    waiter = asyncio.ensure_future(s.next())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # nothing queued: next() waits for a real notification
    await s.publish_callback(publish(4, ua.DataChangeNotification(MonitoredItems=items(5))))
    assert [handles(b) for b in await asyncio.wait_for(waiter, 1.0)] == [[5]]


async def test_the_queue_keeps_the_newest_notifications_and_counts_the_rest() -> None:
    s = sub(cap=5)
    await s.publish_callback(publish(1, ua.DataChangeNotification(MonitoredItems=items(1, 2, 3))))
    await s.publish_callback(publish(2, ua.StatusChangeNotification(
        Status=ua.StatusCode(ua.UInt32(ua.StatusCodes.Good)))))
    await s.publish_callback(publish(3, ua.DataChangeNotification(MonitoredItems=items(4, 5))))
    assert s.dropped == 0
    await s.publish_callback(publish(4, ua.DataChangeNotification(
        MonitoredItems=items(6, 7, 8, 9))))
    assert s.dropped == 4  # 9 queued, cap 5: handles 1-4 go, the status change stays
    got = [handles(b) for b in await s.next()]
    assert got == ["Good", [5], [6, 7, 8, 9]]
    assert sum(len(b) for b in got if isinstance(b, list)) == 5


async def test_the_session_pump_delivers_known_handles_and_counts_unknown_ones() -> None:
    cfg = parse(Config, {"kind": "opcua", "name": "ua", "endpoint": "opc.tcp://127.0.0.1:4840",
                         "nodes": [{"sensor_id": "t", "node_id": "ns=2;s=T"}]})
    health = DriverHealth("ua", "opcua")
    session = Session(cfg, Client(cfg.endpoint), health)  # not connected: the pump needs none
    s = sub()
    g = SubGroup(1.0, items_of(cfg), sub=s)
    g.handles[1] = g.items[0]
    now = ua.DateTime.now(UTC)
    known = ua.MonitoredItemNotification(ClientHandle=1, Value=ua.DataValue(
        ua.Variant(21.5), SourceTimestamp=now))
    await s.publish_callback(publish(1, ua.DataChangeNotification(
        MonitoredItems=[known, *items(99)])))
    pump = asyncio.ensure_future(session._pump(g, s))
    try:
        out = await asyncio.wait_for(session.next_batch(), 1.0)
    finally:
        pump.cancel()
    assert [(r.sensor_id, r.value) for r in expand(out)] == [("t", 21.5)]
    assert health.errors["unknown_handle"] == 1
