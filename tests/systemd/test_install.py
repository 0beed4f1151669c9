"""systemd/install.sh: install, upgrade (restart only after check-config passes), extras the
config needs, uninstall that keeps the state unless asked.

This machine runs no systemd (PID 1 is not systemd, and no container runtime is available), so
`systemctl` is replaced by a recorder and the package install by a wrapper around this
checkout's installed `edge-agent`; everything else — files, modes, the check-config gate — is
the real script."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "systemd" / "install.sh"

SYSTEMCTL = """#!/bin/sh
echo "$*" >> "{log}"
if [ "$1" = is-active ]; then [ -f "{active}" ]; exit $?; fi
exit 0
"""

APT = """#!/bin/sh
echo "$*" >> "{log}"
"""

NO_LIBS = """#!/bin/sh
echo "0 libs found in cache"
"""

PIP = """#!/bin/sh
echo "$1" >> "{log}"
mkdir -p "{prefix}/venv/bin"
printf '#!/bin/sh\\nexec "{exe}" "$@"\\n' > "{prefix}/venv/bin/edge-agent"
chmod +x "{prefix}/venv/bin/edge-agent"
"""

GOOD = """[agent]
gateway_id = "gw"
[[drivers]]
kind = "simulator"
name = "sim"
"""


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.prefix, self.etc = tmp / "opt", tmp / "etc"
        self.units, self.state = tmp / "units", tmp / "state"
        self.calls, self.pips, self.active = tmp / "calls.log", tmp / "pip.log", tmp / "active"
        self.apt = tmp / "apt.log"
        exe = Path(sys.executable).with_name("edge-agent")
        logs = {"systemctl": self.calls, "pip": self.pips, "apt-get": self.apt, "ldconfig": None}
        for name, text in (("systemctl", SYSTEMCTL), ("pip", PIP), ("apt-get", APT),
                           ("ldconfig", NO_LIBS)):
            p = tmp / name
            p.write_text(text.format(log=logs[name], active=self.active, prefix=self.prefix,
                                     exe=exe))
            p.chmod(0o755)
        self.state.mkdir()
        (self.state / "buffer.db").write_text("x")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PREFIX": str(self.prefix), "ETC": str(self.etc),
               "UNIT_DIR": str(self.units), "STATE_DIR": str(self.state),
               "SYSTEMCTL": str(self.tmp / "systemctl"), "PIP_INSTALL": str(self.tmp / "pip"),
               "CREATE_USER": "0", "PYTHON": sys.executable, "VENV_ARGS": "--without-pip",
               "APT_GET": str(self.tmp / "apt-get"), "LDCONFIG": str(self.tmp / "ldconfig")}
        env.pop("EDGE_API_KEY", None)
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                              env=env, timeout=120)

    def calls_made(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


def test_fresh_install_then_upgrade_then_uninstall(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    r = rig.run()
    assert r.returncode == 0, r.stderr
    cfg, secrets = rig.etc / "config.toml", rig.etc / "secrets.env"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert (rig.units / "edge-agent.service").read_text() == \
        (REPO / "systemd/edge-agent.service").read_text()
    assert (rig.prefix / "dropins" / "sound-card.conf").exists()
    assert rig.calls_made() == ["daemon-reload", "enable edge-agent.service"]
    # the example config needs ${EDGE_API_KEY}: installed, but not started, and it says why
    assert "EDGE_API_KEY" in r.stdout + r.stderr and "not valid yet" in r.stdout
    # upgrade of a running service with a valid config: restarted after check-config
    cfg.write_text(GOOD)
    rig.active.touch()
    r = rig.run()
    assert r.returncode == 0, r.stderr
    assert rig.calls_made()[-2:] == ["is-active --quiet edge-agent.service",
                                     "restart edge-agent.service"]
    assert "upgraded and restarted" in r.stdout
    # upgrade with a config the new version refuses: not restarted, exit 78
    cfg.write_text(GOOD + "bogus_key = 1\n")
    before = len(rig.calls_made())
    r = rig.run()
    assert r.returncode == 78 and "NOT restarted" in r.stdout
    assert "restart edge-agent.service" not in rig.calls_made()[before:]
    # uninstall keeps config and state; --purge removes them
    r = rig.run("--uninstall")
    assert r.returncode == 0 and not rig.prefix.exists() and cfg.exists()
    assert (rig.state / "buffer.db").exists()
    assert not (rig.units / "edge-agent.service").exists()
    r = rig.run("--uninstall", "--purge")
    assert r.returncode == 0 and not rig.etc.exists() and not rig.state.exists()


def test_installs_the_extras_the_config_needs(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.etc.mkdir()
    (rig.etc / "config.toml").write_text(GOOD + '[[drivers]]\nkind = "soundcard"\nname = "m"\n')
    r = rig.run()
    assert rig.pips.read_text().splitlines() == [f"{REPO}[audio]"]
    # PortAudio itself is a system library: installed when ldconfig does not know it
    assert rig.apt.read_text().splitlines() == ["install -y -q libportaudio2"], r.stdout
    assert "installing libportaudio2" in r.stdout
