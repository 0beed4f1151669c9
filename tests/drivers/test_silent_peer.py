"""A peer that accepts TCP and never answers (a hung Modbus gateway): the supervisor backs off
exponentially to its maximum (a TCP connect is not success), and a connection that stops
answering is one disconnect — not a flap of connected/disconnected on every retry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator

import pytest

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import DriverOutput
from edge_agent.drivers.modbus import Config, create
from edge_agent.records import Reading, expand
from edge_agent.settings import parse as build
from tests.conftest import free_port
from tests.drivers.modbus_server import MbServer, plant_map
from tests.drivers.proxy import FreezableProxy

pytestmark = pytest.mark.timeout(60)

BACKOFF = Backoff(initial=0.02, maximum=0.16, multiplier=2.0, jitter=0.0)


class BlackHole:
    """Accepts every connection, reads and discards whatever comes, never writes a byte."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> BlackHole:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass

    async def __aexit__(self, *exc: object) -> None:
        for w in self._writers:
            w.close()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(OSError):
            await self._server.wait_closed()


class Attempts(logging.Handler):
    """The supervisor's records, at every level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def failures(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == "driver failed; reconnecting"]

    def connects(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == "driver connected"]


@pytest.fixture
def attempts() -> Iterator[Attempts]:
    logger = logging.getLogger("edge_agent.agent.supervisor")
    handler, level = Attempts(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _cfg(port: int) -> Config:
    return build(Config, {"kind": "modbus", "name": "mb", "host": "127.0.0.1", "port": port,
                          "poll_interval": "50ms", "timeout": "100ms", "retries": 0,
                          "devices": [{"name": "plc", "unit_id": 1, "points": [
                              {"sensor_id": "t", "table": "input", "address": 0}]}]})


async def _noop(out: DriverOutput) -> None:
    return None


async def until(cond: Callable[[], bool], bound: float, what: str) -> None:
    for _ in range(int(bound / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {bound}s: {what}")


async def test_silent_peer_backs_off_to_the_maximum(attempts: Attempts,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "pymodbus")
    async with BlackHole() as peer:
        drv = create(_cfg(peer.port))
        flips: list[bool] = []

        async def watch() -> None:
            was = False
            while True:
                if drv.health().connected != was:
                    was = drv.health().connected
                    flips.append(was)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        task = asyncio.create_task(run_driver(drv, _noop, poll_interval=0.05, backoff=BACKOFF,
                                              rng=random.Random(3)))
        try:
            await until(lambda: len(attempts.failures()) >= 8, 30, "8 failed attempts")
        finally:
            task.cancel()
            watcher.cancel()
            await asyncio.gather(task, watcher, return_exceptions=True)
    fails = attempts.failures()
    assert peer.accepted >= 8  # every attempt did connect over TCP...
    delays = [float(r.retry_in_s) for r in fails[:8]]  # type: ignore[attr-defined]
    # ... and still counts as a failure: 0.02, 0.04, 0.08, 0.16, 0.16, ...
    assert delays == [0.02, 0.04, 0.08, 0.16, 0.16, 0.16, 0.16, 0.16], delays
    assert [r.attempt for r in fails[:8]] == list(range(1, 9))  # type: ignore[attr-defined]
    assert not attempts.connects() and flips == []  # never "connected"
    # one warning when it went down, the repeats at debug level
    assert [r.levelno for r in fails[:8]] == [logging.WARNING] + [logging.DEBUG] * 7
    # pymodbus' own line per unanswered request is demoted too (the driver reports them)
    unanswered = [r for r in caplog.records if "No response received" in r.getMessage()]
    assert unanswered and all(r.levelno == logging.DEBUG for r in unanswered)


async def test_device_that_goes_silent_is_one_disconnect(attempts: Attempts) -> None:
    m = plant_map()
    srv = MbServer(m, port=free_port())
    await srv.start()
    proxy = FreezableProxy(srv.port)
    await proxy.start()
    drv = create(_cfg(proxy.port))
    flips: list[tuple[float, bool]] = []
    got: list[Reading] = []

    async def emit(out: DriverOutput) -> None:
        got.extend(r for r in expand(out) if isinstance(r, Reading) and r.value is not None)

    async def watch() -> None:
        was = False
        while True:
            if drv.health().connected != was:
                was = drv.health().connected
                flips.append((time.monotonic(), was))
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    task = asyncio.create_task(run_driver(drv, emit, poll_interval=0.05, backoff=BACKOFF))
    try:
        await until(lambda: bool(got), 10, "first values")
        proxy.freeze()  # the device accepts connections but never answers from now on
        await until(lambda: len(attempts.failures()) >= 8, 30, "8 failed attempts")
        assert [up for _, up in flips] == [True, False]  # one connect, one disconnect
        assert len(attempts.connects()) == 1
        assert [r.levelno for r in attempts.failures()[:8]] == (
            [logging.WARNING] + [logging.DEBUG] * 7)
        proxy.thaw()  # it answers again: connected once more, the backoff starts over
        await until(lambda: len(flips) >= 3, 10, "connected again")
        assert [up for _, up in flips] == [True, False, True]
        assert drv.health().detail["reconnect_attempts"] == 0
    finally:
        task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
        await proxy.stop()
        await srv.stop()
