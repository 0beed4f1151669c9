"""Endpoints that cannot work: clear errors, and run_driver retries them with backoff forever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import DriverDisconnected, DriverOutput
from edge_agent.drivers.opcua import Config, create, parse_endpoint
from edge_agent.records import Reading, expand
from edge_agent.settings import ConfigError, parse
from tests.drivers.leaks import ResourceCount
from tests.drivers.opcua_server import PlantServer, nid

pytestmark = pytest.mark.timeout(60)


def test_parse_endpoint() -> None:
    assert parse_endpoint("opc.tcp://plc:4841/x") == ("opc.tcp://plc:4841/x", "plc", 4841)
    assert parse_endpoint("opc.tcp://plc/x") == ("opc.tcp://plc:4840/x", "plc", 4840)
    assert parse_endpoint("OPC.TCP://[::1]") == ("opc.tcp://[::1]:4840", "::1", 4840)
    for url, needle in (("http://plc:4840/", "has scheme 'http'"),
                        ("opc.https://plc/", "has scheme 'opc.https'"),
                        ("plc:4840", "has scheme 'plc'"),
                        ("//plc:4840", "has no scheme"),
                        ("opc.tcp://:4840/", "names no host"),
                        ("opc.tcp://plc:99999/", "not a valid endpoint URL"),
                        ("opc.tcp://plc:0/", "port 0")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            parse_endpoint(url)
    with pytest.raises(ConfigError, match=re.escape("endpoint: 'opc.tcp://:4840/' names no host")):
        parse(Config, {"kind": "opcua", "name": "ua", "endpoint": "opc.tcp://:4840/",
                       "nodes": [{"sensor_id": "a", "node_id": "i=84"}]})


def _port_free_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Retries(logging.Handler):
    """The supervisor's "driver failed; reconnecting" records (the first at warning level, the
    repeats while still down at debug level)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.grew = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "retry_in_s"):
            self.records.append(record)
            self.grew.set()

    async def until(self, n: int, bound: float) -> None:
        async with asyncio.timeout(bound):
            while len(self.records) < n:
                self.grew.clear()
                await self.grew.wait()


@pytest.fixture
def retries() -> Iterator[Retries]:
    logger = logging.getLogger("edge_agent.agent.supervisor")
    handler, level = Retries(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _cfg(endpoint: str) -> Config:
    return parse(Config, {"kind": "opcua", "name": "ua", "endpoint": endpoint,
                          "timeout": "1s", "connection_check": "500ms",
                          "nodes": [{"sensor_id": "temp", "node_id": nid("Temp"),
                                     "publishing_interval": "100ms"}]})


BACKOFF = Backoff(initial=0.005, maximum=0.04, multiplier=2.0, jitter=0.5)
ATTEMPTS = 40  # far past the point where the delay reaches its maximum


@pytest.mark.parametrize("case", ["dead", "scheme", "other_loopback_host"])
async def test_bad_endpoints_retry_forever_with_backoff(case: str, retries: Retries,
                                                        ua_shelf: Path) -> None:
    port = _port_free_on("127.0.0.2" if case == "other_loopback_host" else "127.0.0.1")
    if case == "scheme":
        # settings.parse refuses it (test_parse_endpoint); a Config built in code reaches the driver
        cfg = _cfg(f"opc.tcp://127.0.0.1:{port}/plant/").model_copy(
            update={"endpoint": f"http://127.0.0.1:{port}/plant/"})
        expected = (f"opcua ua: endpoint 'http://127.0.0.1:{port}/plant/' has scheme 'http'; "
                    "an OPC-UA endpoint looks like opc.tcp://host:4840/path")
    else:
        host = "127.0.0.2" if case == "other_loopback_host" else "127.0.0.1"
        cfg = _cfg(f"opc.tcp://{host}:{port}/plant/")
        expected = (f"opcua ua: cannot connect to opc.tcp://{host}:{port}/plant/: "
                    f"connection refused: nothing listening at {host}:{port}")
    drv = create(cfg)
    got: list[Reading] = []
    arrived = asyncio.Event()

    async def emit(out: DriverOutput) -> None:
        got.extend(r for r in expand(out) if isinstance(r, Reading) and r.value is not None)
        arrived.set()

    base = ResourceCount.now()
    task = asyncio.create_task(run_driver(drv, emit, poll_interval=None, backoff=BACKOFF,
                                          rng=random.Random(7)))
    try:
        await retries.until(ATTEMPTS, 30.0)
        assert not task.done(), "run_driver gave up"
        recs = retries.records
        assert {vars(r)["error"] for r in recs} == {expected}  # extra fields of the records
        assert [r.levelno for r in recs[:3]] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
        assert [vars(r)["attempt"] for r in recs[:ATTEMPTS]] == list(range(1, ATTEMPTS + 1))
        delays = [float(vars(r)["retry_in_s"]) for r in recs]
        for i, d in enumerate(delays[:ATTEMPTS]):  # exponential up to the maximum, jittered
            cap = min(BACKOFF.maximum, BACKOFF.initial * BACKOFF.multiplier ** i)
            assert cap * (1 - BACKOFF.jitter) - 1e-3 <= d <= cap + 1e-3, (i, d)
        assert max(delays) <= BACKOFF.maximum + 1e-3
        h = drv.health().snapshot()
        assert h["connected"] is False
        errors = h["errors"]
        assert isinstance(errors, dict)
        kind = "DriverError" if case == "scheme" else "DriverDisconnected"
        assert errors[kind] >= ATTEMPTS
        assert errors["endpoint" if case == "scheme" else "connect"] >= ATTEMPTS
        if case == "dead":
            # the endpoint comes alive: the same loop, still retrying, connects and delivers
            plant = PlantServer(port, shelf=ua_shelf)
            await plant.start()
            try:
                async with asyncio.timeout(10):
                    while not got:
                        arrived.clear()
                        await arrived.wait()
                assert got[0].sensor_id == "temp" and drv.health().connected
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await plant.stop()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.05)
    ResourceCount.now().assert_same_as(base)  # no socket or task left from ~40 failed opens


@pytest.mark.parametrize("keep_open", [False, True])
async def test_an_http_server_at_the_endpoint_is_named(keep_open: bool) -> None:
    """An HTTP server answers the Hello with 400 (and closes, or keeps the socket open): the
    error says what the peer answered, not "connection lost" or "timed out waiting"."""
    held: list[asyncio.StreamWriter] = []

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 11\r\n\r\nBad Request")
        await writer.drain()
        if keep_open:
            held.append(writer)
        else:
            writer.close()

    srv = await asyncio.start_server(http, "127.0.0.1", 0)
    port = int(srv.sockets[0].getsockname()[1])
    drv = create(_cfg(f"opc.tcp://127.0.0.1:{port}/plant/"))
    try:
        with pytest.raises(DriverDisconnected) as err:
            await drv.open()
    finally:
        await drv.close()
        for w in held:
            w.close()
        srv.close()
        await srv.wait_closed()
    text = str(err.value)
    assert (f"the peer at 127.0.0.1:{port} is an HTTP server, not OPC-UA: it answered "
            "'HTTP/1.1 400 Bad Request'") in text, text
    assert "timed out" not in text and "connection lost" not in text


async def test_a_silent_peer_at_the_endpoint_is_named() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(1024):
                pass
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = int(srv.sockets[0].getsockname()[1])
    drv = create(_cfg(f"opc.tcp://127.0.0.1:{port}/plant/"))
    try:
        with pytest.raises(DriverDisconnected, match="accepted the connection but did not "
                                                     "answer an OPC-UA Hello"):
            await drv.open()
    finally:
        await drv.close()
        srv.close()
        await srv.wait_closed()
