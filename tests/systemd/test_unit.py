"""The shipped unit as a plant IT department checks it: systemd-analyze security and verify.

`systemd-analyze security --offline=true` must rate the unit at most 1.5, and at most 2.0 with
each documented drop-in (sound card, serial ports) applied. `make test` installs Debian's
systemd (for systemd-analyze) when missing; a missing tool fails here, it is never skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd" / "edge-agent.service"
DROPINS = sorted((REPO / "systemd" / "dropins").glob("*.conf"))


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (make test does it)")
    return exe


def exposure(unit_text: str, tmp: Path) -> float:
    path = tmp / "edge-agent.service"
    path.write_text(unit_text)
    out = subprocess.run([analyze(), "security", "--offline=true", str(path)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for edge-agent\.service: ([0-9.]+)", out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


def with_dropin(dropin: Path) -> str:
    """The unit with a drop-in's [Service] lines appended to its [Service] section (later
    assignments win, as systemd applies drop-ins)."""
    lines = [ln for ln in dropin.read_text().splitlines()
             if ln.strip() and not ln.startswith("#") and not ln.startswith("[")]
    head, sep, tail = UNIT.read_text().partition("\n[Install]")
    return head + "\n" + "\n".join(lines) + "\n" + sep + tail


def test_shipped_unit_exposure_at_most_1_5(tmp_path: Path) -> None:
    assert exposure(UNIT.read_text(), tmp_path) <= 1.5


@pytest.mark.parametrize("dropin", DROPINS, ids=[d.stem for d in DROPINS])
def test_dropins_stay_at_most_2_0(dropin: Path, tmp_path: Path) -> None:
    text = with_dropin(dropin)
    assert "DeviceAllow=" in text and "SupplementaryGroups=" in text
    assert exposure(text, tmp_path) <= 2.0


def test_dropins_documented() -> None:
    names = {d.name for d in DROPINS}
    assert {"sound-card.conf", "serial-modbus.conf"} <= names
    readme = (REPO / "README.md").read_text()
    for n in names:
        assert n in readme, f"{n} is not documented in the README"


def test_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing wrong (the program path is rewritten to an existing
    executable, since /opt/edge-agent is not installed on the test machine)."""
    text = UNIT.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", "/bin/true")
    path = tmp_path / "edge-agent.service"
    path.write_text(text)
    out = subprocess.run([analyze(), "verify", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "edge-agent.service" not in out.stderr, out.stderr


def test_unit_speaks_notify_with_watchdog_and_reload() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID",
                 "RestartPreventExitStatus=78", "UMask=0077", "StateDirectory=edge-agent",
                 "ConfigurationDirectory=edge-agent", "MemoryDenyWriteExecute=yes",
                 "SystemCallFilter=@system-service", "DevicePolicy=closed",
                 "CapabilityBoundingSet=\n"):
        assert line in text, line
