"""The MQTT output as a buffer :class:`~edge_agent.sync.delivery.Sink`.

The buffer's delivery loop hands the sink batches of committed rows in commit order;
:meth:`MqttSink.deliver` publishes the batch's messages in order at QoS 1 and answers
:class:`Delivered` only once every PUBACK has arrived, else ``RetryAfter("broker_down")`` — the
same batch comes back later, so nothing raised while the broker is down is lost and per-source
order holds. Messages of a batch already acknowledged by the broker are not published again when
the batch is retried in the same process (a QoS 1 redelivery after a crash carries the same
``event_id``, so a subscriber can tell).

Subclasses say what a batch becomes (:meth:`MqttSink.messages`), what is published on every
connection before data (births) and what the last will is: :mod:`.json_sink` and
:mod:`.sparkplug_sink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from edge_agent.sync.delivery import Batch, Delivered, Outcome, RetryAfter, Table

from .client import Link, Message, Session
from .config import MqttConfig

log = logging.getLogger(__name__)

__all__ = ["MqttSink"]

READY_WAIT = 1.0  # how long deliver() waits for a (re)connecting broker before RetryAfter
_KEEP_ACKED = 8  # batches whose acknowledged messages are remembered (retries skip them)


class MqttSink:
    """Common part of the JSON and Sparkplug sinks: the link, deliver(), stats()."""

    name = "mqtt"
    tables: frozenset[Table] = frozenset({"events"})

    def __init__(self, cfg: MqttConfig, gateway_id: str) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.link = Link(cfg, cfg.client_id or gateway_id, on_up=self._up, will=self.will,
                         on_message=self.on_message)
        self._task: asyncio.Task[None] | None = None
        self._acked: OrderedDict[str, set[int]] = OrderedDict()
        self.batches_delivered = 0
        self.bytes_sent = 0  # payload bytes of delivered batches
        self.bad_rows = 0
        self.mode = cfg.mode
        self.lock = asyncio.Lock()  # one batch or birth sequence on the wire at a time
        self.not_ready_kind = "broker_down"
        # A retried batch skips what the broker acknowledged (QoS 1). Sparkplug data is QoS 0
        # (the specification's choice): a retry re-sends the whole batch after the rebirth.
        self.skip_acked = True

    # -- to be provided by a mode ----------------------------------------------------------
    def will(self) -> Message | None:
        return None

    async def births(self, session: Session) -> Sequence[Message]:
        """Subscriptions and messages published on each new connection before any data."""
        return ()

    def messages(self, batch: Batch) -> list[Message]:
        raise NotImplementedError

    def last_messages(self) -> Sequence[Message]:
        """Published on a clean stop (offline status, NDEATH)."""
        return ()

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message on a subscribed topic (commands, a host's STATE)."""

    def ready_for_data(self) -> bool:
        return True

    def stamp(self, msgs: Sequence[Message]) -> list[Message]:
        """Last touch right before publishing (Sparkplug: sequence numbers)."""
        return list(msgs)

    def delivered(self, msgs: Sequence[Message]) -> None:
        """Every message of a batch was acknowledged (for counters)."""

    def publish_failed(self) -> None:
        """Some message of a batch got no PUBACK (Sparkplug: the session is dropped)."""

    def mode_stats(self) -> dict[str, Any]:
        return {}

    # -- lifecycle -------------------------------------------------------------------------
    async def _up(self, session: Session) -> bool:
        async with self.lock:
            births = self.stamp(await self.births(session))
            return not births or all(await self.link.publish(births, session))

    async def start(self) -> None:
        """Start connecting (idempotent); deliver() calls it too."""
        t = self._task
        if t is not None and t.done() and not t.cancelled() and t.exception() is not None:
            log.error("mqtt connection manager crashed; restarting", exc_info=t.exception())
        if t is None or t.done():
            self._task = asyncio.create_task(self.link.run(), name=f"mqtt:{self.name}")

    async def run(self) -> None:
        """Run the connection manager in the caller's task (supervised by the pipeline)."""
        await self.start()
        assert self._task is not None
        await asyncio.shield(self._task)

    async def close(self) -> None:
        await self.link.close(self.last_messages())
        if self._task is not None:
            try:  # the session ends once the DISCONNECT is out
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    # -- delivery --------------------------------------------------------------------------
    async def deliver(self, batch: Batch) -> Outcome:
        await self.start()
        if not await self.link.wait_ready(READY_WAIT):
            return RetryAfter("broker_down", self.link.last_error or "not connected")
        async with self.lock:
            if not self.ready_for_data():
                return RetryAfter(self.not_ready_kind, "not ready for data")
            msgs = self.messages(batch)
            acked = self._acked.setdefault(batch.key, set())
            self._acked.move_to_end(batch.key)
            while len(self._acked) > _KEEP_ACKED:
                self._acked.popitem(last=False)
            if not self.skip_acked:
                acked.clear()
            todo = [i for i in range(len(msgs)) if i not in acked]
            flags = [False] * len(todo)
            try:
                await self.link.publish(self.stamp([msgs[i] for i in todo]), done=flags)
            finally:  # also when cancelled (shutdown): what the broker has is not sent again
                acked.update(i for i, ok in zip(todo, flags, strict=True) if ok)
            if len(acked) < len(msgs):
                self.publish_failed()
                return RetryAfter("broker_down",
                                  self.link.last_error or "publish not acknowledged")
        self._acked.pop(batch.key, None)
        self.batches_delivered += 1
        self.bytes_sent += sum(len(m.payload) for m in msgs)
        self.delivered(msgs)
        return Delivered()

    def stats(self) -> dict[str, Any]:
        """For the status page and metrics: state, connected, last_error, counts."""
        return {**self.link.stats(), "mode": self.mode,
                "batches_delivered": self.batches_delivered, "bad_rows": self.bad_rows,
                **self.mode_stats()}
