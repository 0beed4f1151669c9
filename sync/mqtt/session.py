"""One MQTT session's pieces: the message type, PUBACK bookkeeping, clear failure reasons."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

__all__ = ["Message", "Session", "describe_error", "refusal"]


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1
    seq: bool = False  # Sparkplug: a sequence number is stamped on it at publish time


def describe_error(exc: BaseException) -> str:
    """One clear reason for a failed connection attempt (never the password)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no broker listening)"
    if isinstance(exc, TimeoutError | OSError):
        return f"cannot reach the broker ({exc.strerror or type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


class Session:
    """One connected paho client: publishes with PUBACK futures, subscriptions."""

    def __init__(self, client: paho.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.alive = True
        self._acks: dict[int, asyncio.Future[bool]] = {}

    def publish(self, msg: Message) -> asyncio.Future[bool]:
        """Queue ``msg``; the future turns True on its PUBACK, False if the session ends."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        if not self.alive:
            fut.set_result(False)
            return fut
        info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            fut.set_result(False)
        else:  # QoS 1: on its PUBACK; QoS 0: once written to the connection (paho's on_publish,
            # run by a later loop callback either way)
            self._acks[info.mid] = fut
        return fut

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, qos=qos)

    def puback(self, mid: int) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(True)

    def end(self) -> None:
        self.alive = False
        for fut in self._acks.values():
            if not fut.done():
                fut.set_result(False)
        self._acks.clear()

    @property
    def in_flight(self) -> int:
        return len(self._acks)


def refusal(reason: Any) -> str:
    text = str(reason)
    low = text.lower()
    if "password" in low or "not authorized" in low or "bad user" in low:
        return f"the broker refused the credentials ({text}): check username/password"
    return f"the broker refused the connection ({text})"
