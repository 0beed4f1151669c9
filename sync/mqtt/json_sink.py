"""JSON mode: status birth/will, alerts and events per topic, retained alarm state.

Topics under ``<prefix>`` (``topic_prefix``, default ``edge/{gateway_id}``):

* ``status`` — retained ``{"state": "online", …}`` on every connection; the same topic is the
  last will ``{"state": "offline"}`` (QoS 1, retained); a clean stop publishes ``offline``.
* ``alerts/<source_id>`` — each ``anomaly_raised`` / ``anomaly_cleared`` event, QoS 1.
* ``alarms/<source_id>`` — retained current alarm state of the source (``active`` true/false),
  published after the alerts of each batch (once per source: the state the batch ends with).
* ``events/<kind>`` — every other event as its contract JSON object.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from edge_agent import __version__
from edge_agent.records import format_ts
from edge_agent.sync.delivery import Batch

from .client import Message, Session
from .config import MqttConfig
from .sink import MqttSink

log = logging.getLogger(__name__)

__all__ = ["ALERT_KINDS", "JsonSink", "topic_level"]

ALERT_KINDS = frozenset({"anomaly_raised", "anomaly_cleared"})
_BAD = re.compile(r"[+#/\x00]")


def topic_level(text: str) -> str:
    """A source id or kind as one topic level (no separators, no wildcards)."""
    return _BAD.sub("_", text) or "_"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def alert_body(ev: dict[str, Any]) -> dict[str, Any]:
    """``{event_id, kind, severity, source_id, score, threshold, model, timestamp}`` (+ the
    fault diagnosis, the hysteresis time and the clear threshold when the event has them)."""
    d = ev.get("details") or {}
    out: dict[str, Any] = {k: ev.get(k) for k in ("event_id", "kind", "severity", "source_id")}
    out.update(score=d.get("score"), threshold=d.get("threshold"), model=d.get("model"),
               timestamp=ev.get("timestamp"))
    for extra in ("diagnosis", "seconds", "clear_threshold"):
        if extra in d:
            out[extra] = d[extra]
    return out


class JsonSink(MqttSink):
    """``mode = "json"``."""

    def __init__(self, cfg: MqttConfig, gateway_id: str) -> None:
        super().__init__(cfg, gateway_id)
        self.prefix = cfg.prefix(gateway_id)
        self.started = time.time()
        self.alarms: dict[str, bytes] = {}  # source -> last retained alarm body published
        self.alerts = 0  # alert messages acknowledged by the broker
        self.events = 0
        self._alerts_at, self._events_at = f"{self.prefix}/alerts/", f"{self.prefix}/events/"

    def _status(self, state: str) -> Message:
        body: dict[str, Any] = {"state": state, "gateway_id": self.gateway_id}
        if state == "online":
            body.update(version=__version__, started=format_ts(self.started),
                        mode="json")
        return Message(f"{self.prefix}/status", _dumps(body), retain=True)

    def will(self) -> Message:
        return self._status("offline")

    async def births(self, session: Session) -> Sequence[Message]:
        # Retained alarm states again: a broker restarted without persistence forgot them.
        return [self._status("online"),
                *(Message(f"{self.prefix}/alarms/{topic_level(src)}", body, retain=True)
                  for src, body in self.alarms.items())]

    def last_messages(self) -> Sequence[Message]:
        return [self._status("offline")]

    def messages(self, batch: Batch) -> list[Message]:
        out: list[Message] = []
        alarms: dict[str, bytes] = {}  # the retained state after the batch, once per source
        for row in batch.events:
            try:
                ev = json.loads(row)
                kind, source = str(ev["kind"]), str(ev["source_id"])
            except (ValueError, KeyError, TypeError):
                self.bad_rows += 1
                log.warning("mqtt: event row is not a contract event; skipped",
                            extra={"batch": batch.id})
                continue
            if kind in ALERT_KINDS:
                level = topic_level(source)
                out.append(Message(f"{self.prefix}/alerts/{level}", _dumps(alert_body(ev))))
                alarms.pop(source, None)  # keeps the order of the last transitions
                alarms[source] = self._alarm(ev)
            else:
                out.append(Message(f"{self.prefix}/events/{topic_level(kind)}",
                                   row.encode()))
        self.alarms.update(alarms)
        out += [Message(f"{self.prefix}/alarms/{topic_level(src)}", body, retain=True)
                for src, body in alarms.items()]
        return out

    def delivered(self, msgs: Sequence[Message]) -> None:
        for m in msgs:
            if m.topic.startswith(self._alerts_at):
                self.alerts += 1
            elif m.topic.startswith(self._events_at):
                self.events += 1

    @staticmethod
    def _alarm(ev: dict[str, Any]) -> bytes:
        active = ev["kind"] == "anomaly_raised"
        d = ev.get("details") or {}
        return _dumps({"active": active, "source_id": ev["source_id"],
                       "severity": ev.get("severity") if active else "info",
                       "since": ev.get("timestamp"), "event_id": ev.get("event_id"),
                       "score": d.get("score"), "threshold": d.get("threshold"),
                       "model": d.get("model")})

    def mode_stats(self) -> dict[str, Any]:
        return {"alerts": self.alerts, "events": self.events,
                "active_alarms": sorted(s for s, b in self.alarms.items()
                                        if b.startswith(b'{"active":true'))}
