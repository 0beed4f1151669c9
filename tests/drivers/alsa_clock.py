"""The minutes-long sound-card capture as a session fixture that overlaps the rest of the suite.

The root conftest imports :func:`soundcard_clock_run` (autouse, session scope). When the
checker (:data:`CHECKER`) is among the selected tests, the fixture starts
tests/drivers/alsa_clock_child.py at the session's first test: the real driver capturing two
virtual ALSA devices through PortAudio for :data:`SECONDS`, in its own process (its own HOME and
ALSA configuration; this process never imports ``sounddevice`` for it). The checker runs near
the end of the suite and only waits for what is left; run alone, it waits the whole capture.
When the checker is not selected, nothing starts.

A child that crashes fails the checker with its log; one that hangs is killed once
:data:`SECONDS` + :data:`MARGIN_S` have passed since its start, and fails it too. The fixture's
teardown always stops and reaps the child (and the child dies with the session, see the child).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKER = "tests/test_timestamps_soundcard.py"
SECONDS = 180.0          # three minutes of paced audio
MARGIN_S = 90.0          # start-up and write-out, even on a loaded machine


@dataclass
class ClockRun:
    out: Path
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float = field(default_factory=time.monotonic)

    def tail(self) -> str:
        return (self.out / "child.log").read_text(errors="replace")[-4000:]

    def result(self) -> dict[str, Any]:
        """Wait for the child (at most until its deadline) and return its result."""
        left = self.started + SECONDS + MARGIN_S - time.monotonic()
        try:
            rc = self.proc.wait(timeout=max(left, 1.0))
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the background sound-card capture hung: no result "
                        f"{SECONDS + MARGIN_S:.0f} s after its start (killed); its log:\n"
                        f"{self.tail()}")
        if rc != 0:
            pytest.fail(f"the background sound-card capture failed (exit {rc}); its log:\n"
                        f"{self.tail()}")
        done = self.out / "result.json"
        if not done.is_file():
            pytest.fail(f"the background sound-card capture wrote no result; its log:\n"
                        f"{self.tail()}")
        out: dict[str, Any] = json.loads(done.read_text())
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session", autouse=True)
def soundcard_clock_run(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClockRun | None]:
    if not any(item.nodeid.startswith(CHECKER) for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("soundcard-clock")
    log = (out / "child.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.drivers.alsa_clock_child", str(out),
                             str(SECONDS)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    run = ClockRun(out, proc, log)
    try:
        yield run
    finally:
        run.stop()
