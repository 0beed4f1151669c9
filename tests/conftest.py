"""Shared test fixtures: where the real recorded data lives, and free loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.drivers.alsa_clock import soundcard_clock_run  # noqa: F401 - session fixture

REPO = Path(__file__).resolve().parent.parent

# Modules whose PortAudio must start after their own ALSA configuration is written: the first
# ``import sounddevice`` in a process reads ~/.asoundrc once, so they run before any other test
# (which might import it) whatever order or subset the command line names.
FRESH_PORTAUDIO = ("tests/drivers/test_alsa_soundcard.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = [it for it in items if it.nodeid.startswith(FRESH_PORTAUDIO)]
    if first:
        rest = [it for it in items if not it.nodeid.startswith(FRESH_PORTAUDIO)]
        items[:] = first + rest


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
