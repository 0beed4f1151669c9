"""Fixtures for the driver tests (owned by the drivers developer)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.drivers.opcua_server import build_standard_shelf


@pytest.fixture(scope="session")
def ua_shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """asyncua's standard address-space shelf, built once per test session (one full
    ``Server.init()``); every :class:`~tests.drivers.opcua_server.PlantServer` given it then
    starts in ~0.2 s. Built on a worker thread's own event loop, apart from the tests' loops."""
    directory = tmp_path_factory.mktemp("ua-ns0")
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, build_standard_shelf(directory)).result()
