"""A test Sparkplug host application: decodes every payload and checks the node's rules."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.sync.mqtt import sparkplug_b_pb2 as pb

from .support import Scada

NS = "spBv1.0"


@dataclass
class Msg:
    kind: str
    device: str | None
    payload: Any  # pb.Payload


@dataclass
class NodeView:
    """What a host knows of one edge node after checking the message stream."""

    bdseq: int | None = None
    births: int = 0
    deaths: list[int | None] = field(default_factory=list)
    seq: int | None = None
    aliases: dict[str, dict[int, str]] = field(default_factory=dict)  # device -> alias -> name
    values: dict[tuple[str, str], list[tuple[Any, bool]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def value_of(m: Any) -> Any:
    if m.is_null:
        return None
    which = m.WhichOneof("value")
    return getattr(m, which) if which else None


class Host(Scada):
    """Subscribes to ``spBv1.0/<group>/#`` and decodes every payload (raises on garbage)."""

    def __init__(self, port: int, group: str, host_id: str = "scada") -> None:
        self.group, self.host_id = group, host_id
        super().__init__(port, (f"{NS}/{group}/#",), client_id=f"host-{host_id}")

    def msgs(self) -> list[Msg]:
        out = []
        with self.cond:
            got = list(self.got)
        for _, topic, payload, _r in got:
            parts = topic.split("/")
            if parts[2] in ("NCMD", "DCMD"):
                continue  # the host's own commands
            out.append(Msg(parts[2], parts[4] if len(parts) > 4 else None,
                           pb.Payload.FromString(payload)))
        return out

    def kinds(self) -> list[str]:
        return [m.kind + (f":{m.device}" if m.device else "") for m in self.msgs()]

    def count(self, kind: str) -> int:
        return sum(1 for m in self.msgs() if m.kind == kind)

    async def until_kind(self, kind: str, n: int = 1, within: float = 15.0) -> bool:
        return await self.until(lambda g: sum(1 for _, t, _, _ in g
                                              if t.split("/")[2] == kind) >= n, within)

    def state(self, online: bool) -> None:
        body = json.dumps({"online": online, "timestamp": int(time.time() * 1000)}).encode()
        self.publish(f"{NS}/STATE/{self.host_id}", body, retain=True)

    def rebirth(self, node: str, payload: bytes | None = None) -> None:
        if payload is None:
            p = pb.Payload(timestamp=int(time.time() * 1000))
            p.metrics.add(name="Node Control/Rebirth", datatype=pb.Boolean, boolean_value=True)
            payload = p.SerializeToString()
        self.publish(f"{NS}/{self.group}/NCMD/{node}", payload)

    def check(self) -> NodeView:
        """Replay the stream as a host would and record every rule broken."""
        v = NodeView()
        for m in self.msgs():
            p = m.payload
            if m.kind == "NBIRTH":
                names = {x.name: value_of(x) for x in p.metrics}
                v.bdseq, v.births, v.seq = names.get("bdSeq"), v.births + 1, p.seq
                if p.seq != 0:
                    v.errors.append(f"NBIRTH seq {p.seq}")
                if "Node Control/Rebirth" not in names:
                    v.errors.append("NBIRTH without Node Control/Rebirth")
                v.aliases.clear()
                continue
            if m.kind == "NDEATH":
                b = {x.name: value_of(x) for x in p.metrics}.get("bdSeq")
                v.deaths.append(b)
                if b != v.bdseq:
                    v.errors.append(f"NDEATH bdSeq {b} != NBIRTH bdSeq {v.bdseq}")
                if p.HasField("seq"):
                    v.errors.append("NDEATH with seq")
                v.seq = None
                continue
            if v.seq is None:
                v.errors.append(f"{m.kind} before NBIRTH")
            elif p.seq != (v.seq + 1) % 256:
                v.errors.append(f"{m.kind} seq {p.seq} after {v.seq}")
            v.seq = p.seq
            dev = m.device or ""
            if m.kind == "DBIRTH":
                v.aliases[dev] = {x.alias: x.name for x in p.metrics}
                if any(not x.name or not x.HasField("alias") for x in p.metrics):
                    v.errors.append("DBIRTH metric without name and alias")
            elif m.kind == "DDATA":
                self._ddata(v, dev, p)
            elif m.kind == "DDEATH":
                v.aliases.pop(dev, None)
        return v

    @staticmethod
    def _ddata(v: NodeView, dev: str, p: Any) -> None:
        if dev not in v.aliases:
            v.errors.append(f"DDATA for {dev} without DBIRTH")
            return
        for x in p.metrics:
            if x.name:
                v.errors.append("DDATA metric carries a name (aliases after birth)")
            name = v.aliases[dev].get(x.alias)
            if name is None:
                v.errors.append(f"DDATA alias {x.alias} unknown for {dev}")
                continue
            v.values.setdefault((dev, name), []).append((value_of(x), x.is_historical))
