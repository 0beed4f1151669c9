"""Shared test fixtures: where the real recorded data lives, and free loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.drivers.alsa_clock import soundcard_clock_run  # noqa: F401 - session fixture

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    return Path(os.environ.get("EDGE_AGENT_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real recordings (CWRU, NASA IMS, MIMII); skip with a clear reason when absent."""
    d = shared_data_dir()
    if not (d / "README.md").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI requires the shared recordings at {d} (set EDGE_AGENT_TEST_DATA)")
        pytest.skip(f"real recordings not found at {d}; set EDGE_AGENT_TEST_DATA to run this test")
    return d


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()
