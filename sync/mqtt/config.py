"""``[mqtt]``: where and how the gateway publishes alerts (JSON) or a Sparkplug B edge node.

No ``[mqtt]`` table: no MQTT. Secrets (``password`` / ``password_file``) are resolved only when
connecting and never printed; TLS verification is on whenever the URL is ``mqtts://``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from edge_agent.backoff import Backoff
from edge_agent.settings import Duration, Model, SecretField

__all__ = ["Broker", "MqttConfig", "SparkplugConfig"]

_ID = re.compile(r"[^+#/]+")  # a Sparkplug id / topic level: no wildcards, no separators


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool


class SparkplugConfig(Model):
    """``[mqtt.sparkplug]``."""

    group_id: str
    edge_node_id: str | None = None  # default: gateway_id
    primary_host_id: str | None = None

    def problems(self) -> Iterable[tuple[str, str]]:
        for key in ("group_id", "edge_node_id", "primary_host_id"):
            val = getattr(self, key)
            if val is not None and not _ID.fullmatch(val):
                yield key, "must be non-empty and contain none of + # /"


class MqttConfig(Model):
    """``[mqtt]``."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str | None = None  # default: gateway_id
    username: str | None = None
    password: SecretField | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: Duration = 30.0
    mode: Literal["json", "sparkplug"] = "json"
    topic_prefix: str = "edge/{gateway_id}"
    sparkplug: SparkplugConfig | None = None
    max_inflight: int = Field(500, ge=1, le=65535)
    publish_timeout: Duration = 10.0
    backoff_initial: Duration = 0.5
    backoff_max: Duration = 60.0

    def problems(self) -> Iterable[tuple[str, str]]:
        try:
            self.broker()
        except ValueError as exc:
            yield "url", str(exc)
        if self.keepalive < 1:
            yield "keepalive", "must be at least 1s"
        if self.publish_timeout <= 0:
            yield "publish_timeout", "must be > 0"
        if not 0 < self.backoff_initial <= self.backoff_max:
            yield "backoff_initial", "must be > 0 and not exceed backoff_max"
        if self.password is not None and self.username is None:
            yield "password", "needs username"
        if (self.cert_file is None) != (self.key_file is None):
            yield "cert_file", "cert_file and key_file go together"
        if self.mode == "sparkplug" and self.sparkplug is None:
            yield "sparkplug", "mode = \"sparkplug\" needs a [mqtt.sparkplug] table"
        if self.mode == "json" and self.sparkplug is not None:
            yield "sparkplug", "only used with mode = \"sparkplug\""
        if any(c in self.topic_prefix for c in "+#") or self.topic_prefix.endswith("/"):
            yield "topic_prefix", "must not contain + or # nor end with /"
        if "{" in self.topic_prefix.replace("{gateway_id}", ""):
            yield "topic_prefix", "only {gateway_id} may be substituted"

    def world_problems(self) -> Iterable[tuple[str, str]]:
        for key in ("ca_file", "cert_file", "key_file"):
            val = getattr(self, key)
            if val is not None and not Path(val).expanduser().is_file():
                yield key, f"no such file: {val}"

    def broker(self) -> Broker:
        """Host, port and TLS from ``url`` (``mqtt://`` 1883, ``mqtts://`` 8883)."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials (use username / password)")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("must be mqtt[s]://host[:port] only")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        tls = parts.scheme == "mqtts"
        return Broker(parts.hostname, port or (8883 if tls else 1883), tls)

    def prefix(self, gateway_id: str) -> str:
        return self.topic_prefix.replace("{gateway_id}", gateway_id)

    def backoff(self) -> Backoff:
        return Backoff(initial=self.backoff_initial, maximum=self.backoff_max)
