"""OPC-UA client driver (asyncua): subscriptions, grouped polling, waveform arrays, security.

A streaming driver: :meth:`OpcUaDriver.read` waits for the next batch of data-change
notifications and polled values. Every :meth:`open` builds a *fresh* ``asyncua.Client`` (a
reused client can hang after a server restart) and creates every subscription again; the agent
owns reconnect backoff. asyncua's own auto-reconnect and stale-subscription recreation are off:
this driver runs its own freshness watchdog, because it knows each subscription's interval.

Failure scope:

* a node that is missing (unknown NodeId, browse path not found) or that turns Bad affects that
  node only: a quality-0 reading with the reason, an entry in ``health().bad_points``; missing
  nodes are retried every ``missing_retry``;
* a subscription that stays silent (no data *and* no keep-alive) longer than
  ``freshness_factor x publishing_interval x keepalive_count`` is rebuilt on the server; if the
  rebuild fails, or ``max_rebuilds`` rebuilds in a row bring nothing, the driver raises
  :class:`DriverDisconnected` and the agent reconnects with a fresh client;
* a lost connection (asyncua's connection watchdog, a failed poll) raises
  :class:`DriverDisconnected` from :meth:`read`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from asyncua import Client, ua
from asyncua.crypto import security_policies, uacrypto
from pydantic import Field

from edge_agent.drivers.base import DriverDisconnected, DriverError, DriverHealth, DriverOutput
from edge_agent.drivers.opcua_certs import DEFAULT_APPLICATION_URI
from edge_agent.drivers.opcua_items import UA_ERRORS
from edge_agent.drivers.opcua_probe import describe_peer, pinned_mismatch
from edge_agent.drivers.opcua_session import Session, SessionFailed
from edge_agent.records import Reading, ReadingBlock
from edge_agent.settings import Duration, Model, SecretField

log = logging.getLogger(__name__)


class _QuietRetries(logging.Filter):
    """asyncua logs a traceback at error level each time its publish loop (or connection
    supervisor) fails after the server went away; the driver reports that loss and the agent
    reconnects, so those records are demoted to debug level (kept for debugging asyncua)."""

    MESSAGES = ("Publish iteration crashed", "Connection supervisor iteration crashed")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith(self.MESSAGES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_QUIET = _QuietRetries()
for _name in ("asyncua.client.ua_session.UaSession", "asyncua.client.client"):
    if _QUIET not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_QUIET)
_SETUP_ERRORS: tuple[type[BaseException], ...] = (SessionFailed, *UA_ERRORS)

_ID = r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}"


class Node(Model):
    """One configured node: a scalar tag or (``waveform = true``) an array waveform source."""

    sensor_id: str = Field(pattern=f"^(?:{_ID})$")
    node_id: str = ""               # "ns=2;s=Press7.OilTemp" ...
    browse_path: str = ""           # ... or "/Objects/2:Press7/2:OilTemp" from the Root folder
    sensor_type: str = "opcua"
    unit: str = ""
    mode: Literal["subscription", "polling"] = "subscription"
    publishing_interval: Duration = Field(1.0, gt=0)
    sampling_interval: Duration | None = Field(None, ge=0)   # default: publishing_interval
    # server-side queue per node; default (None): from publishing / sampling interval with room
    # for jitter (see opcua_items.queue_size_of); values the server still had to discard are
    # counted per node in health (detail["overflows"], from the status's Overflow bit)
    queue_size: int | None = Field(None, ge=1, le=10_000)
    deadband: Literal["none", "absolute", "percent"] = "none"
    deadband_value: float = Field(0.0, ge=0)
    poll_interval: Duration = Field(1.0, gt=0)     # mode = "polling"
    waveform: bool = False
    channels: tuple[str, ...] = ("x",)
    sample_rate: float | None = Field(None, gt=0)
    sample_rate_node: str = ""
    # waveform stamp: "start" = first sample's time; "end" = end of the block (when the buffer
    # filled): start + n / rate, one sample period after the last sample
    timestamp_at: Literal["start", "end"] = "end"

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if bool(self.node_id) == bool(self.browse_path):
            out.append(("node_id", "give exactly one of node_id or browse_path"))
        for key in ("node_id", "sample_rate_node"):
            text = getattr(self, key)
            if text and not self.is_node_id(text):
                out.append((key, f"{text!r} is not an OPC-UA node id (e.g. "
                                 "\"ns=2;s=Press7.OilTemp\", \"ns=2;i=5012\", \"i=84\")"))
        if self.deadband == "percent" and self.deadband_value > 100:
            out.append(("deadband_value", "a percent deadband must be <= 100"))
        if self.deadband != "none" and self.mode == "polling":
            out.append(("deadband", "deadbands apply to subscriptions only"))
        if self.waveform:
            if (self.sample_rate is None) == (not self.sample_rate_node):
                out.append(("sample_rate", "a waveform needs exactly one of sample_rate or "
                                           "sample_rate_node"))
            if not self.channels or len(set(self.channels)) != len(self.channels):
                out.append(("channels", "must be non-empty and unique"))
        elif self.sample_rate is not None or self.sample_rate_node:
            out.append(("sample_rate", "only for waveform = true"))
        return out

    @staticmethod
    def is_node_id(text: str) -> bool:
        """``text`` parses as an OPC-UA node id (asyncua's parser)."""
        try:
            ua.NodeId.from_string(text)
        except (ua.UaStringParsingError, ValueError):
            return False
        return True


class Config(Model):
    """``[[drivers]] kind = "opcua"``."""

    kind: Literal["opcua"]
    name: str = Field(pattern=f"^(?:{_ID})$")
    endpoint: str                   # opc.tcp://host[:port][/path]; the port defaults to 4840
    nodes: tuple[Node, ...] = Field(min_length=1)
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: str = ""           # client certificate (DER or PEM) ...
    private_key: str = ""           # ... and its private key (PEM)
    server_certificate: str = ""    # optional: pin the server's certificate
    application_uri: str = DEFAULT_APPLICATION_URI
    username: str = ""
    password: SecretField | None = None  # or password_file = "/etc/edge-agent/opcua.pw", "${ENV}"
    timeout: Duration = Field(5.0, gt=0, le=120)        # per request
    connection_check: Duration = Field(5.0, gt=0, le=60)  # liveness probe period+timeout
    # How long the server keeps a session whose connection dropped. Each reconnect opens a new
    # session, so keep this short: a flapping link must not exhaust a PLC's few session slots.
    session_timeout: Duration = Field(120.0, ge=10, le=3600)
    keepalive_count: int = Field(10, ge=1, le=1000)
    freshness_factor: float = Field(3.0, ge=1.5, le=100)
    max_rebuilds: int = Field(3, ge=1, le=100)
    missing_retry: Duration = Field(30.0, gt=0)

    def waveform_sources(self) -> tuple[str, ...]:
        """Array nodes are waveform sources named by their sensor_id."""
        return tuple(n.sensor_id for n in self.nodes if n.waveform)

    def problems(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.has_userinfo(self.endpoint):
            out.append(("endpoint", "must not carry user:password@ (it would be shown and "
                                    "logged): use username and password or password_file"))
        else:
            try:
                parse_endpoint(self.endpoint)
            except ValueError as exc:
                out.append(("endpoint", str(exc)))
        if self.security_policy != "None" and not (self.certificate and self.private_key):
            out.append(("certificate", f"security_policy {self.security_policy} needs "
                                       "certificate and private_key"))
        if self.password is not None and not self.username:
            out.append(("username", "is required with a password"))
        seen: set[str] = set()
        for i, n in enumerate(self.nodes):
            if n.sensor_id in seen:
                out.append((f"nodes[{i}].sensor_id", f"duplicate sensor_id {n.sensor_id!r}"))
            seen.add(n.sensor_id)
        return out

    def world_problems(self) -> list[tuple[str, str]]:
        return [(key, f"cannot read {path}") for key in
                ("certificate", "private_key", "server_certificate")
                if (path := getattr(self, key)) and not os.access(path, os.R_OK)]

    @staticmethod
    def has_userinfo(url: str) -> bool:
        try:
            return urlsplit(url).username is not None
        except ValueError:
            return False


def parse_endpoint(url: str) -> tuple[str, str, int]:
    """``(url, host, port)`` of an ``opc.tcp://host[:port][/path]`` endpoint, with the IANA
    default port 4840 written into the URL when it has none; ``ValueError`` says what is wrong.
    (asyncua itself ignores the scheme and would connect to port 0 when the port is missing.)"""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid endpoint URL: {exc}") from None
    if parts.scheme.lower() != "opc.tcp":
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(f"{url!r} has {got}; an OPC-UA endpoint looks like "
                         "opc.tcp://host:4840/path")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} names no host (opc.tcp://host:4840/path)")
    if port is None:
        port = 4840
        netloc = f"{parts.netloc}:{port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    elif port == 0:
        raise ValueError(f"{url!r}: port 0 is not a server port")
    return url, host, port


def _why(exc: BaseException, host: str, port: int) -> str:
    """A connect failure in words an operator can act on."""
    if isinstance(exc, OSError) and exc.filename:   # certificate or key file
        return f"cannot read {exc.filename}: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: nothing listening at {host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host!r}: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return f"timed out waiting for {host}:{port}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({host}:{port})"
    return repr(exc)


def create(cfg: Config) -> OpcUaDriver:
    return OpcUaDriver(cfg)


class OpcUaDriver:
    """Streaming driver; see the module docstring for the failure model."""

    streaming = True

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._health = DriverHealth(cfg.name, "opcua")
        self._session: Session | None = None

    def health(self) -> DriverHealth:
        return self._health

    def _new_client(self, url: str) -> Client:
        c = self.cfg
        client = Client(url, timeout=float(c.timeout),
                        watchdog_intervall=float(c.connection_check))
        client.application_uri = c.application_uri
        client.session_timeout = int(float(c.session_timeout) * 1000)
        client.name = client.description = f"edge-gateway-agent {c.name}"
        # Freshness is ours (see Session.watchdog); keep asyncua's watchdog from racing it.
        client._stale_check_margin = 1e9  # asyncua 2.x knob; inert on 1.x
        return client

    async def _configure(self, client: Client) -> None:
        c = self.cfg
        if c.security_policy != "None":
            await self._check_pki()
            mode = getattr(ua.MessageSecurityMode, c.security_mode)
            try:
                await client.set_security(security_policies.SecurityPolicyBasic256Sha256,
                                          certificate=c.certificate, private_key=c.private_key,
                                          server_certificate=c.server_certificate or None,
                                          mode=mode)
            except (ValueError, TypeError) as exc:   # unusable key material (not a network error)
                raise DriverError(f"opcua {c.name}: cannot load certificate/private_key "
                                  f"{c.certificate} / {c.private_key}: {exc}") from exc
        if c.username:
            client.set_user(c.username)
            if c.password is not None:
                try:
                    client.set_password(c.password.reveal())
                except (LookupError, OSError) as exc:
                    raise DriverError(f"opcua {c.name}: password unavailable "
                                      f"({c.password.describe()}): {exc}") from exc

    async def _check_pki(self) -> None:
        """Parse each certificate / key file first, so a malformed one is a :class:`DriverError`
        naming it (a configuration problem: retrying cannot help) rather than a crash.

        A missing or unreadable file stays an OSError (reported as a connect failure, retried).
        """
        c = self.cfg
        files: list[tuple[str, str, Callable[[str], Awaitable[object]]]] = [
            ("certificate", c.certificate, uacrypto.load_certificate),
            ("private_key", c.private_key, uacrypto.load_private_key)]
        if c.server_certificate:
            files.append(("server_certificate", c.server_certificate, uacrypto.load_certificate))
        for what, path, loader in files:
            try:
                await loader(path)
            except (ValueError, TypeError) as exc:
                raise DriverError(f"opcua {c.name}: cannot load {what} {path}: {exc}") from exc

    async def open(self) -> None:
        await self.close()
        try:
            url, host, port = parse_endpoint(self.cfg.endpoint)
        except ValueError as exc:  # only a Config built in code (not parsed) gets here
            self._health.error("endpoint")
            raise DriverError(f"opcua {self.name}: endpoint {exc}") from exc
        client = self._new_client(url)
        session = Session(self.cfg, client, self._health)
        self._session = session
        limit = float(self.cfg.timeout) * 4 + 5.0
        try:
            async with asyncio.timeout(limit):
                await self._configure(client)
                await client.connect()
        except ua.UaStatusCodeError as exc:
            await self.close()
            self._health.error("connect")
            raise DriverDisconnected(f"opcua {self.name}: server refused session at "
                                     f"{url}: {exc}") from exc
        except UA_ERRORS as exc:
            await self.close()
            self._health.error("connect")
            why = _why(exc, host, port)
            if (isinstance(exc, TimeoutError | ConnectionError | EOFError | ua.UaError)
                    and not isinstance(exc, ConnectionRefusedError)):
                # "connection lost" / "timed out" may hide a peer that is no OPC-UA server, or
                # a server whose certificate is not the pinned one
                probe_s = min(float(self.cfg.timeout), 3.0)
                said = await describe_peer(host, port, url, probe_s)
                if said is None and self.cfg.server_certificate:
                    said = await pinned_mismatch(url, self.cfg.server_certificate, probe_s)
                why = said or why
            raise DriverDisconnected(f"opcua {self.name}: cannot connect to {url}: {why}"
                                     ) from exc
        try:
            # room for a refused batch of monitored items and a few single-node retries
            # (opcua_monitor.create_each), each bounded by the request timeout
            retries_s = (float(self.cfg.timeout) + 1.0) * (2 + min(len(self.cfg.nodes), 8))
            async with asyncio.timeout(limit + len(self.cfg.nodes) * 0.01 + retries_s):
                await session.start()
        except _SETUP_ERRORS as exc:
            await self.close()
            self._health.error("setup")
            raise DriverDisconnected(f"opcua {self.name}: setting up subscriptions failed: "
                                     f"{exc!r}") from exc
        self._health.connected = True

    async def read(self) -> DriverOutput:
        session = self._session
        if session is None:
            raise DriverDisconnected(f"opcua {self.name}: not open")
        try:
            out: DriverOutput = list(await session.next_batch())
        except SessionFailed as exc:
            self._health.connected = False
            raise DriverDisconnected(f"opcua {self.name}: {exc}") from exc
        if out:
            self._health.ok(sum(len(r) - r.values.count(None) if isinstance(r, ReadingBlock)
                                else int(not isinstance(r, Reading) or r.value is not None)
                                for r in out))
        return out

    async def close(self) -> None:
        session, self._session = self._session, None
        self._health.connected = False
        if session is not None:
            await session.stop(limit_s=float(self.cfg.timeout))
