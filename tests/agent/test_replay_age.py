"""A replay (or simulator) ``start_time`` older than the buffer's ``max_age`` would have every
replayed record deleted at the next housekeeping: refused at start (exit 78) naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.io import wavfile

from edge_agent.agent import config
from edge_agent.records import format_ts

CONFIG = """
[agent]
state_dir = "{state}"
[buffer]
max_age = "{max_age}"
[[drivers]]
kind = "replay"
name = "rp"
path = "{rec}"
start_time = "{start}"
"""


def write(tmp_path: Path, start: float, max_age: str = "30d") -> Path:
    wavfile.write(tmp_path / "a.wav", 8000, np.zeros(800, np.int16))
    p = tmp_path / "c.toml"
    p.write_text(CONFIG.format(state=tmp_path / "s", rec=tmp_path / "a.wav",
                               start=format_ts(start), max_age=max_age))
    return p


def test_old_start_time_is_a_config_problem(tmp_path: Path) -> None:
    now = time.time()
    cfg = config.load(write(tmp_path, now - 40 * 86400))
    found = config.world_problems(cfg)
    assert [p.key for p in found] == ["drivers[0].start_time"]
    assert "older than buffer.max_age" in found[0].message
    # recent enough, or a longer max_age: fine
    assert config.world_problems(config.load(write(tmp_path, now - 3600))) == []
    assert config.world_problems(config.load(write(tmp_path, now - 40 * 86400, "60d"))) == []
    r = subprocess.run([sys.executable, "-m", "edge_agent.agent.cli", "check-config", "-c",
                        str(write(tmp_path, now - 400 * 86400))], capture_output=True,
                       text=True, timeout=120, check=False, env={**os.environ})
    assert r.returncode == 78 and "drivers[0].start_time" in r.stderr
