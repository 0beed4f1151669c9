"""Fixtures for the store-and-forward tests: a real loopback receiver, buffers, readings."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.records import Reading
from edge_agent.settings import Secret
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.pack import prefix, unpack, unpack_idx, wire
from edge_agent.sync.uploader import Uploader, UploaderConfig
from tests.receiver import IngestReceiver

API_KEY = "test-key-123"
T0 = float(int(time.time()) - 3600)  # recent: the default max_age keeps it


def readings(n: int, sensor: str = "press-07.oil_temp", t0: float = T0, step: float = 0.001,
             **kw: Any) -> list[Reading]:
    return [Reading(sensor, "temperature", 20.0 + i * 0.25, "degC", t0 + i * step, **kw)
            for i in range(n)]


def fast_uploader_cfg(url: str, **kw: Any) -> UploaderConfig:
    base: dict[str, Any] = dict(url=url, api_key=Secret(API_KEY), interval=0.0,
                                backoff_initial=0.02, backoff_max=0.2,
                                auth_retry_interval=0.2, timeout=2.0)
    base.update(kw)
    return UploaderConfig(**base)


def db_rows(path: Path, table: str = "readings") -> int:
    """Rows stored in ``table`` (readings: packed, ``n`` readings per chunk row)."""
    what = "coalesce(sum(n), 0)" if table == "readings" else "count(*)"
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT {what} FROM {table}").fetchone()[0])
    finally:
        conn.close()


def stored_readings(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every stored reading as its contract JSON object, in order (unpacked)."""
    pre = {sid: prefix((a, b, c)) for sid, a, b, c in conn.execute(
        "SELECT id, sensor_id, sensor_type, unit FROM sources")}
    out = []
    for srcs, idx, n, body in conn.execute("SELECT srcs, idx, n, body FROM readings ORDER BY id"):
        table = [pre[int(x)] for x in srcs.split(",")]
        out += json.loads("[" + wire(table, unpack_idx(idx, n), unpack(body).split("\n")) + "]")
    return out


@pytest.fixture
def rx() -> Iterator[IngestReceiver]:
    with IngestReceiver(api_key=API_KEY) as r:
        yield r
    assert not r.errors, r.errors


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    b = Buffer(tmp_path / "buffer.db", BufferConfig())
    await b.start()
    yield b
    await b.close()


async def wait_rx(rx: IngestReceiver, pred: Any, within: float = 20.0) -> bool:
    return await asyncio.to_thread(rx.wait_for, pred, within)


class Running:
    """An uploader task bound to a buffer; cancelled on exit."""

    def __init__(self, buffer: Buffer, cfg: UploaderConfig, gateway_id: str = "gw-test") -> None:
        self.up = Uploader(buffer, cfg, gateway_id)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Uploader:
        self.task = asyncio.create_task(self.up.run())
        return self.up

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
