"""Test peers for the MQTT sink: a SCADA subscriber (paho) and an in-memory delivery handle.

:class:`FakeHandle` stands in for the buffer's per-sink delivery handle (``next_batch``,
``settle``, ``wait_for_data``): committed rows in order, one cursor, batches re-offered with the
same key and members until settled :class:`Delivered`. :func:`drive` is the generic delivery
loop in miniature (the agent uses ``sync.runner.run_sink``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.records import format_ts
from edge_agent.sync.delivery import Batch, Delivered, Outcome, RetryAfter, Sink


def event_row(kind: str, source: str, ts: float | None = None, severity: str = "warning",
              **details: Any) -> str:
    return json.dumps({"event_id": uuid.uuid4().hex, "kind": kind, "source_id": source,
                       "timestamp": format_ts(ts if ts is not None else time.time()),
                       "severity": severity, "details": details})


def alert(kind: str, source: str, score: float = 0.9, **kw: Any) -> str:
    return event_row(kind, source, score=score, threshold=0.5,
                     model={"name": "iforest", "version": "3"},
                     severity="warning" if kind == "anomaly_raised" else "info", **kw)


@dataclass
class FakeHandle:
    """Committed rows per table and one sink cursor; a batch is re-offered until delivered."""

    max_rows: int = 100
    rows: dict[str, list[str]] = field(default_factory=lambda: {
        "events": [], "features": [], "readings": []})
    cursor: dict[str, int] = field(default_factory=lambda: {
        "events": 0, "features": 0, "readings": 0})
    pending: Batch | None = None
    seq: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    data: asyncio.Event = field(default_factory=asyncio.Event)
    commit_times: dict[str, float] = field(default_factory=dict)

    def commit(self, table: str, *rows: str) -> None:
        self.rows[table].extend(rows)
        now = time.perf_counter()
        for r in rows:
            if table == "events":
                self.commit_times[json.loads(r)["event_id"]] = now
        self.data.set()

    def next_batch(self) -> Batch | None:
        if self.pending is not None:
            b = self.pending
            self.pending = Batch(b.sink, b.id, b.key, b.attempts + 1, b.events, b.features,
                                 b.readings, b.n_readings)
            return self.pending
        take = {t: self.rows[t][self.cursor[t]:self.cursor[t] + self.max_rows]
                for t in self.rows}
        if not any(take.values()):
            return None
        self.seq += 1
        self.pending = Batch("mqtt", self.seq, f"gw:{self.seq}", 0, tuple(take["events"]),
                             tuple(take["features"]), tuple(take["readings"]),
                             len(take["readings"]))
        return self.pending

    def settle(self, batch: Batch, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if isinstance(outcome, Delivered):
            self.cursor["events"] += len(batch.events)
            self.cursor["features"] += len(batch.features)
            self.cursor["readings"] += batch.n_readings
            self.pending = None

    async def wait_for_data(self) -> None:
        await self.data.wait()
        self.data.clear()

    @property
    def backlog(self) -> int:
        return sum(len(self.rows[t]) - self.cursor[t] for t in self.rows)


async def drive(sink: Sink, handle: FakeHandle, retry: float = 0.05) -> None:
    """Deliver forever: next batch, deliver, settle; RetryAfter waits ``retry``."""
    while True:
        batch = handle.next_batch()
        if batch is None:
            await handle.wait_for_data()
            continue
        out = await sink.deliver(batch)
        handle.settle(batch, out)
        if isinstance(out, RetryAfter):
            await asyncio.sleep(max(retry, out.after or 0.0))


class Scada:
    """A subscriber in its own paho thread, recording (time, topic, payload, retain)."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",), *, tls_ca: str | None = None,
                 auth: tuple[str, str] | None = None, client_id: str = "") -> None:
        self.got: list[tuple[float, str, bytes, bool]] = []
        self.qos: list[int] = []  # QoS each message arrived with (min of publish, subscribe)
        self.cond = threading.Condition()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or
                             f"scada-{uuid.uuid4().hex[:8]}")
        if auth:
            self.c.username_pw_set(*auth)
        if tls_ca:
            self.c.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        subscribed = threading.Event()
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("test SCADA client could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.cond:
            self.got.append((time.perf_counter(), msg.topic, bytes(msg.payload), msg.retain))
            self.qos.append(msg.qos)
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[list[tuple[float, str, bytes, bool]]], bool],
                 within: float = 15.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: pred(self.got), within)

    async def until(self, pred: Callable[[list[tuple[float, str, bytes, bool]]], bool],
                    within: float = 15.0) -> bool:
        return await asyncio.to_thread(self.wait_for, pred, within)

    def on(self, topic_prefix: str) -> list[tuple[str, Any]]:
        """(topic, decoded JSON) of messages whose topic starts with ``topic_prefix``."""
        with self.cond:
            return [(t, json.loads(p)) for _, t, p, _r in self.got
                    if t.startswith(topic_prefix)]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def eventually(pred: Callable[[], bool], within: float = 15.0) -> bool:
    """Poll ``pred`` (state of this process, e.g. a handle's backlog) until true or timeout."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
