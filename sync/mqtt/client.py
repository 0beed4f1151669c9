"""One MQTT connection on paho-mqtt 2.x, driven from asyncio, reconnecting forever.

Each session is a fresh paho client driven by the event loop itself (paho's external-loop
interface: ``loop_read`` when the socket is readable, ``loop_write`` when paho has bytes to send,
``loop_misc`` every second for keepalive), so there is no network thread and no lock hand-off
per message. Only the blocking part — TCP connect and TLS handshake — runs in a worker thread,
so the daemon never blocks on the broker. When the session ends (refused, lost, closed) the
:class:`Link` logs one line saying why, waits :class:`~edge_agent.backoff.Backoff` and starts a
new session — forever, until :meth:`Link.close`.

A session never outlives its connection: messages paho had not got a PUBACK for are dropped
with it, and :meth:`Link.publish` reports them as not delivered, so the caller (a sink driven by
the buffer) offers them again. In-flight messages are bounded by ``max_inflight``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .config import MqttConfig
from .session import Message, Session, describe_error, refusal

log = logging.getLogger(__name__)

__all__ = ["Link", "Message", "Session"]  # the last two re-exported from .session


@dataclass
class _Counters:
    connects: int = 0
    connect_failures: int = 0
    published: int = 0
    publish_failures: int = 0


OnUp = Callable[[Session], Awaitable[bool]]
OnMessage = Callable[[str, bytes], None]


@dataclass
class _Attempt:
    """One session's futures, resolved by paho's callbacks on the event loop."""

    connack: asyncio.Future[str | None]  # None: accepted; else why refused
    done: asyncio.Future[str | None]  # why the session ended (None: closed by us)
    session: Session | None = None


class Link:
    """The connection manager: sessions, reconnect with backoff, readiness, stats.

    ``will()`` gives the last will for the next session (Sparkplug: NDEATH with a new bdSeq);
    ``on_up(session)`` runs once per session after CONNACK (subscriptions, births) before the
    link is ready for data (False: births failed, start a new session); ``on_message`` gets
    every message on subscribed topics."""

    def __init__(self, cfg: MqttConfig, client_id: str, *, on_up: OnUp,
                 will: Callable[[], Message | None] = lambda: None,
                 on_message: OnMessage | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.broker = cfg.broker()
        self._on_up = on_up
        self._will = will
        self._on_message = on_message
        self.session: Session | None = None
        self.ready = asyncio.Event()
        self.state = "idle"
        self.last_error: str | None = None
        self.counters = _Counters()
        self._closing = False
        self._stopped = asyncio.Event()  # set by close(): ends a backoff wait at once
        self._retrier = cfg.backoff().retrier()

    # -- session ---------------------------------------------------------------------------
    def _client(self, att: _Attempt) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=True, reconnect_on_failure=False)
        # Link.publish bounds what is in flight; paho's own bound rescans its whole queue on
        # every PUBACK (quadratic in the window), so it is switched off.
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        if self.cfg.username is not None:
            pw = self.cfg.password.reveal() if self.cfg.password is not None else None
            c.username_pw_set(self.cfg.username, pw)
        if self.broker.tls:
            c.tls_set(ca_certs=self.cfg.ca_file, certfile=self.cfg.cert_file,
                      keyfile=self.cfg.key_file, cert_reqs=ssl.CERT_REQUIRED)
        will = self._will()
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            _set(att.connack, None if not reason.is_failure else refusal(reason))

        def on_publish(_c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
            if att.session is not None:
                att.session.puback(mid)

        def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
            if self._on_message is not None:
                self._on_message(msg.topic, bytes(msg.payload))

        c.on_connect = on_connect
        c.on_publish = on_publish
        c.on_message = on_message
        return c

    def _attach(self, client: paho.Client, att: _Attempt,
                loop: asyncio.AbstractEventLoop) -> None:
        """Drive the connected client from the event loop: no network thread."""
        sock = client.socket()
        if sock is None:
            _set(att.connack, "connection lost")
            _set(att.done, "connection lost")
            return
        fd = sock.fileno()
        with contextlib.suppress(OSError, AttributeError):  # small packets out at once (Nagle
            # + delayed ACK would hold a PUBLISH that follows another for ~40 ms)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]

        def readable() -> None:
            client.loop_read()
            pending = getattr(client.socket(), "pending", None)
            while pending is not None and pending() > 0:  # bytes TLS already decrypted
                client.loop_read()

        def closed(_c: Any, _u: Any, _s: Any) -> None:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            why = None if self._closing else "connection lost"
            _set(att.connack, why or "connection lost")
            _set(att.done, why)

        def want_write(_c: Any, _u: Any, _s: Any) -> None:
            loop.add_writer(fd, client.loop_write)

        def written(_c: Any, _u: Any, _s: Any) -> None:
            loop.remove_writer(fd)

        client.on_socket_close = closed
        client.on_socket_register_write = want_write
        client.on_socket_unregister_write = written
        loop.add_reader(fd, readable)
        if client.want_write():
            loop.add_writer(fd, client.loop_write)

    async def _tick(self, client: paho.Client) -> None:
        """Keepalive pings and a dead broker's detection (paho's ``loop_misc``)."""
        while True:
            await asyncio.sleep(1.0)
            client.loop_misc()

    async def _session(self, loop: asyncio.AbstractEventLoop) -> str | None:
        """One session from connect to its end; returns why it failed (None: it had run)."""
        att = _Attempt(loop.create_future(), loop.create_future())
        try:
            client = self._client(att)
        except (LookupError, OSError, ValueError) as exc:  # password source, TLS files
            return f"cannot set up the client: {exc}"
        self.state = "connecting"
        try:  # TCP connect and TLS handshake block: a worker thread does them
            await asyncio.to_thread(client.connect, self.broker.host, self.broker.port,
                                    round(self.cfg.keepalive))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            return describe_error(exc)
        self._attach(client, att, loop)
        tick = asyncio.create_task(self._tick(client))
        try:
            return await self._run_session(client, att)
        finally:
            tick.cancel()
            if not att.done.done():  # cancelled: close the socket
                client.disconnect()
                client.loop_write()
                sock = client.socket()
                if sock is not None:
                    loop.remove_reader(sock.fileno())
                    loop.remove_writer(sock.fileno())
                    sock.close()

    async def _run_session(self, client: paho.Client, att: _Attempt) -> str | None:
        async with asyncio.timeout(max(10.0, self.cfg.keepalive)):
            why = await att.connack
        if why is not None:
            return why
        if self._closing:
            client.disconnect()
            return None
        s = att.session = Session(client, asyncio.get_running_loop())
        self.session = s
        self.counters.connects += 1
        self.state = "connected"
        self._retrier.reset()
        log.info("mqtt connected", extra={"broker": self.cfg.url, "client_id": self.client_id})
        try:
            if await self._on_up(s):
                self.ready.set()
            else:
                client.disconnect()  # births must precede data: start over
            end = await att.done
            if end is None and not self._closing:
                end = "births not acknowledged"
        finally:
            self.ready.clear()
            s.end()
            self.session = None
        if end is not None:
            self.last_error = end
            self.state = "disconnected"
            log.warning("mqtt connection lost", extra={"broker": self.cfg.url, "reason": end})
        return None

    async def run(self) -> None:
        """Keep a session up until :meth:`close` (or cancellation)."""
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                why = await self._session(loop)
            except TimeoutError:
                why = "no CONNACK from the broker"
            if self._closing:
                break
            if why is not None:
                self.counters.connect_failures += 1
                self.last_error = why
                self.state = "disconnected"
                delay = self._retrier.next_delay()
                log.error("mqtt connect failed", extra={
                    "broker": self.cfg.url, "client_id": self.client_id, "reason": why,
                    "retry_in_s": round(delay, 3)})
            else:
                delay = self._retrier.next_delay()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)
        self.state = "closed"

    # -- publishing ------------------------------------------------------------------------
    async def wait_ready(self, within: float) -> bool:
        if self.ready.is_set():
            return True
        try:
            async with asyncio.timeout(within):
                await self.ready.wait()
        except TimeoutError:
            return False
        return True

    async def publish(self, msgs: Sequence[Message], session: Session | None = None,
                      done: list[bool] | None = None) -> list[bool]:
        """Publish ``msgs`` in order, at most ``max_inflight`` unacknowledged at a time.

        Returns one flag per message: True when its PUBACK arrived (``done``, if given, is
        filled in place, also when the call is cancelled half way). Stops at the first sign of
        trouble (session ended, no PUBACK within ``publish_timeout``); later ones are False."""
        s = session or self.session
        done = done if done is not None else [False] * len(msgs)
        if s is None:
            return done
        window: deque[tuple[int, asyncio.Future[bool]]] = deque()
        ok = True

        async def settle_one() -> bool:
            i, fut = window[0]
            try:
                async with asyncio.timeout(self.cfg.publish_timeout):
                    done[i] = await asyncio.shield(fut)
            except TimeoutError:
                self.last_error = "no PUBACK within publish_timeout"
                return False
            window.popleft()
            return done[i]

        try:
            for i, m in enumerate(msgs):
                if len(window) >= self.cfg.max_inflight and not await settle_one():
                    ok = False
                    break
                window.append((i, s.publish(m)))
            while ok and window:
                ok = await settle_one()
        finally:
            for i, fut in window:  # acknowledged but not looked at yet (or cancelled)
                done[i] = fut.done() and not fut.cancelled() and fut.result()
                fut.cancel()
            n = sum(done)
            self.counters.published += n
            self.counters.publish_failures += len(msgs) - n
        return done

    def drop(self) -> None:
        """End the current session now (a Sparkplug node dying on purpose); it reconnects."""
        s = self.session
        if s is not None:
            s.client.disconnect()

    async def close(self, last: Sequence[Message] = (), within: float = 5.0) -> None:
        """Publish ``last`` (offline status, NDEATH) if connected, then disconnect cleanly."""
        self._closing = True
        self._stopped.set()
        s = self.session
        if s is not None and last:
            try:
                async with asyncio.timeout(within):
                    await self.publish(last, s)
            except TimeoutError:
                log.warning("mqtt: last messages not acknowledged before close")
        if s is not None:
            s.client.disconnect()
        self.state = "closed"

    def stats(self) -> dict[str, Any]:
        """State first, then what a status page shows (it lists the first few keys)."""
        s = self.session
        return {"state": self.state, "connected": s is not None, "broker": self.cfg.url,
                "published": self.counters.published,
                "last_error": self.last_error or "none",
                "in_flight": s.in_flight if s is not None else 0,
                "publish_failures": self.counters.publish_failures,
                "connects": self.counters.connects,
                "connect_failures": self.counters.connect_failures,
                "ready": self.ready.is_set()}


def _set(fut: asyncio.Future[str | None], value: str | None) -> None:
    if not fut.done():
        fut.set_result(value)
