"""Sparkplug B mode: the gateway as an edge node, each analysed source and each PLC a device.

Per MQTT session: a new bdSeq is taken and registered as the NDEATH will; after CONNACK the node
subscribes to its NCMD/DCMD topics (and ``spBv1.0/STATE/<primary_host_id>`` when configured),
then publishes NBIRTH (seq 0) and every DBIRTH — at once, or, with a primary host, as soon as
the host's retained STATE says it is online. Batches of buffered events, features and readings
become DBIRTH (a device or metric seen for the first time), DDATA (aliases only) and DDEATH (a
PLC's driver disconnected) messages.

While the primary host is offline the node publishes its NDEATH, reconnects and waits: batches
answer ``RetryAfter("host_offline")`` and stay in the SQLite buffer. When the host is back they
are published in order, metrics older than the node's current birth flagged ``is_historical``.
``Node Control/Rebirth`` on NCMD re-publishes the births (same bdSeq, seq from 0); anything else
on a command topic is ignored and counted.

As the specification requires, births, DDATA and DDEATH are QoS 0 (NDEATH, the will, is QoS 1).
So that a batch still counts as delivered only once the broker has it, each batch ends with a
QoS 1 *fence* message on ``<topic_prefix>/sparkplug-fence`` (outside the Sparkplug namespace):
its PUBACK covers everything before it. No PUBACK: the session is dropped, the node is born
again and the whole batch is sent again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent.records import parse_ts
from edge_agent.sync.delivery import Batch, Table

from .client import Message, Session
from .config import MqttConfig
from .json_sink import ALERT_KINDS
from .sink import MqttSink
from .sparkplug import NAMESPACE, BdSeqStore, Node, Update, is_rebirth, with_seq

log = logging.getLogger(__name__)

__all__ = ["SparkplugSink"]


class SparkplugSink(MqttSink):
    """``mode = "sparkplug"``."""

    tables: frozenset[Table] = frozenset({"events", "features", "readings"})

    def __init__(self, cfg: MqttConfig, gateway_id: str, state_dir: Path,
                 devices: Sequence[str] = (),
                 sensor_devices: Mapping[str, str] | None = None) -> None:
        super().__init__(cfg, gateway_id)
        sp = cfg.sparkplug
        assert sp is not None  # MqttConfig.problems() guarantees it in sparkplug mode
        self.node = Node(sp.group_id, sp.edge_node_id or gateway_id)
        self.sensor_devices = dict(sensor_devices or {})  # sensor_id -> device (a PLC driver)
        self.configured = tuple(dict.fromkeys([*devices, *self.sensor_devices.values()]))
        for d in self.configured:
            self.node.device(d)
        self.bdseq_store = BdSeqStore(state_dir / "sparkplug-bdseq")
        self.bdseq = -1
        self.seq = 0
        self.host_id = sp.primary_host_id
        self.state_topic = f"{NAMESPACE}/STATE/{self.host_id}" if self.host_id else None
        self.host_online = self.host_id is None
        self._host_ts = -1
        self.born = False  # NBIRTH published in this session
        self.live_since = time.time()
        self.not_ready_kind = "host_offline"
        self.counts = {"rebirths": 0, "bad_commands": 0, "ignored_commands": 0,
                       "historical_metrics": 0, "ddata": 0, "bad_rows": 0}
        self._tasks: set[asyncio.Task[None]] = set()
        self.fence_topic = f"{cfg.prefix(gateway_id)}/sparkplug-fence"
        self.skip_acked = False

    # -- session -------------------------------------------------------------------------------
    def will(self) -> Message:
        self.bdseq = self.bdseq_store.take()
        self.born = False
        return Message(self.node.topic("NDEATH"), self.node.ndeath(self.bdseq))

    def _births(self) -> list[Message]:
        self.seq = 0
        out = [Message(self.node.topic("NBIRTH"), self.node.nbirth(self.bdseq), seq=True)]
        out += [Message(self.node.topic("DBIRTH", d.id), self.node.dbirth(d.id), seq=True)
                for d in self.node.devices.values() if not d.dead]
        return [*out, self.fence()]

    def fence(self) -> Message:
        """A QoS 1 message after QoS 0 ones: its PUBACK says the broker has everything before
        it (one connection is processed in order). Outside ``spBv1.0/``: hosts never see it."""
        return Message(self.fence_topic, b"")

    async def births(self, session: Session) -> Sequence[Message]:
        session.subscribe(self.node.topic("NCMD"))
        session.subscribe(self.node.topic("DCMD") + "/+")
        if self.state_topic is not None:
            self.host_online = False
            session.subscribe(self.state_topic)  # the retained STATE triggers the births
            return ()
        self.born = True
        self.live_since = time.time()
        return self._births()

    def ready_for_data(self) -> bool:
        return self.born and self.host_online

    def stamp(self, msgs: Sequence[Message]) -> list[Message]:
        out = []
        for m in msgs:
            if m.seq:  # NBIRTH, DBIRTH, DDATA, DDEATH: QoS 0, not retained (spec)
                m = Message(m.topic, with_seq(m.payload, self.seq), retain=False, qos=0)
                self.seq = (self.seq + 1) % 256
            out.append(m)
        return out

    def publish_failed(self) -> None:
        self.link.drop()  # a gap in seq is not allowed: start over with a new birth

    def last_messages(self) -> Sequence[Message]:
        dd = [Message(self.node.topic("DDEATH", d.id), self.node.ddeath(d.id), seq=True)
              for d in self.node.devices.values() if d.born] if self.born else []
        return [*self.stamp(dd), Message(self.node.topic("NDEATH"), self.node.ndeath(self.bdseq))]

    # -- commands and the primary host ---------------------------------------------------------
    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.state_topic:
            self._on_state(payload)
        elif topic == self.node.topic("NCMD"):
            rebirth = is_rebirth(payload)
            if rebirth is None:
                self.counts["bad_commands"] += 1
                log.warning("sparkplug: undecodable NCMD ignored",
                            extra={"bad_commands": self.counts["bad_commands"]})
            elif rebirth:
                self.counts["rebirths"] += 1
                self._spawn(self._rebirth())
            else:
                self.counts["ignored_commands"] += 1
        elif is_rebirth(payload) is None:
            self.counts["bad_commands"] += 1
        else:
            self.counts["ignored_commands"] += 1  # device commands: nothing is writable

    def _on_state(self, payload: bytes) -> None:
        try:
            state = json.loads(payload)
            online, ts = state["online"], int(state.get("timestamp", 0))
            if not isinstance(online, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.counts["bad_commands"] += 1
            log.warning("sparkplug: primary host STATE not understood; ignored")
            return
        if ts < self._host_ts:
            return  # an older STATE than one already seen (spec: ignore)
        self._host_ts = ts
        if online and not self.host_online:
            self.host_online = True
            log.info("sparkplug: primary host online", extra={"host": self.host_id})
            self._spawn(self._rebirth(first=True))
        elif not online and self.host_online:
            self.host_online = False
            log.warning("sparkplug: primary host offline; data stays buffered",
                        extra={"host": self.host_id})
            self._spawn(self._die())

    async def _rebirth(self, first: bool = False) -> None:
        async with self.lock:
            s = self.link.session
            if s is None or not self.host_online or (not first and not self.born):
                return
            if first:
                self.live_since = time.time()
            msgs = self.stamp(self._births())
            self.born = all(await self.link.publish(msgs, s))
            if not self.born:
                self.link.drop()

    async def _die(self) -> None:
        async with self.lock:
            s = self.link.session
            if s is not None and self.born:
                self.born = False
                await self.link.publish([Message(self.node.topic("NDEATH"),
                                                 self.node.ndeath(self.bdseq))], s)
            self.link.drop()  # the next session has a new bdSeq and waits for the host

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- batches -------------------------------------------------------------------------------
    def messages(self, batch: Batch) -> list[Message]:
        out: list[Message] = []
        updates: list[Update] = []
        for row in batch.events:
            out += self._event(row, updates)
        for row in batch.features:
            updates += self._feature(row)
        for row in batch.readings:
            updates += self._readings(row)
        for dev, pairs in self.node.apply(updates).items():
            if not self.node.devices[dev].born:
                out.append(Message(self.node.topic("DBIRTH", dev), self.node.dbirth(dev),
                                   seq=True))
            out.append(Message(self.node.topic("DDATA", dev), self.node.ddata(pairs), seq=True))
            self.counts["ddata"] += 1
            self.counts["historical_metrics"] += sum(u.historical for u, _ in pairs)
        return [*out, self.fence()] if out else out

    def _hist(self, ts: float) -> bool:
        return ts < self.live_since

    def _event(self, row: str, updates: list[Update]) -> Iterable[Message]:
        try:
            ev = json.loads(row)
            kind, src, ts = ev["kind"], str(ev["source_id"]), parse_ts(ev["timestamp"])
        except (ValueError, KeyError, TypeError):
            self.counts["bad_rows"] += 1
            return ()
        if kind in ALERT_KINDS:
            active = kind == "anomaly_raised"
            updates += [Update(src, "alarm/active", active, ts, self._hist(ts)),
                        Update(src, "alarm/severity", str(ev.get("severity", "info")), ts,
                               self._hist(ts))]
        elif kind in ("driver_disconnected", "driver_connected") and src in self.configured:
            dev = self.node.devices[src]
            if kind == "driver_disconnected" and dev.born:
                return [Message(self.node.topic("DDEATH", src), self.node.ddeath(src),
                                seq=True)]
            if kind == "driver_connected" and not dev.born:
                return [Message(self.node.topic("DBIRTH", src), self.node.dbirth(src),
                                seq=True)]
        return ()

    def _feature(self, row: str) -> list[Update]:
        try:
            fv = json.loads(row)
            src, ts = str(fv["source_id"]), parse_ts(fv["window_end"])
            values = dict(fv.get("values") or {})
        except (ValueError, KeyError, TypeError):
            self.counts["bad_rows"] += 1
            return []
        h = self._hist(ts)
        out = [Update(src, f"features/{k}", float(v), ts, h) for k, v in values.items()
               if isinstance(v, int | float)]
        if fv.get("score") is not None:
            out.append(Update(src, "anomaly/score", float(fv["score"]), ts, h))
        if fv.get("is_anomaly") is not None:
            out.append(Update(src, "anomaly/is_anomaly", bool(fv["is_anomaly"]), ts, h))
        return out

    def device_of(self, sensor_id: str) -> tuple[str, str]:
        """(device, metric) of a reading: the PLC driver that reads it (``sensor_devices``,
        metric = the sensor id), a configured device whose id prefixes the sensor id, else the
        sensor id's first dotted part (its asset)."""
        dev = self.sensor_devices.get(sensor_id)
        if dev is not None:
            return dev, sensor_id
        for d in self.configured:
            if sensor_id.startswith(d + "."):
                return d, sensor_id[len(d) + 1:]
        dev, _, rest = sensor_id.partition(".")
        return dev, rest or "value"

    def _readings(self, row: str) -> list[Update]:
        try:
            items = json.loads("[" + row + "]")
        except ValueError:
            self.counts["bad_rows"] += 1
            return []
        out = []
        for r in items:
            try:
                dev, name = self.device_of(str(r["sensor_id"]))
                ts = parse_ts(r["timestamp"])
            except (KeyError, TypeError, ValueError):
                self.counts["bad_rows"] += 1
                continue
            v = r.get("value")
            out.append(Update(dev, name, float(v) if isinstance(v, int | float) else None, ts,
                              self._hist(ts)))
        return out

    def mode_stats(self) -> dict[str, Any]:
        return {**self.counts, "bdseq": self.bdseq, "seq": self.seq, "born": self.born,
                "primary_host_online": self.host_online if self.host_id else None,
                "devices": len(self.node.devices)}
