"""`MemoryDenyWriteExecute=yes` in the unit: the agent must run without writable+executable
memory. The kernel's PR_SET_MDWE (Linux >= 6.3) enforces the same rule as systemd's filter
(no mapping may be both writable and executable, none may become executable); the whole agent
— numpy, scipy, onnxruntime, the feature code and the scorer — runs under it here."""

from __future__ import annotations

import ctypes
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:          # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("a writable+executable mapping was allowed: MDWE is not in force")
except OSError:
    pass
from edge_agent.agent.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""

CONFIG = """
[agent]
gateway_id = "mdwe-gw"
state_dir = "{state}"
[metrics]
enabled = false
[[drivers]]
kind = "simulator"
name = "sim"
asset = "pump-01"
pace = "fast"
[[pipelines]]
source = "pump-01.de_accel"
features = {{ kind = "vibration" }}
model = {{ path = "builtin:vibration_simulator" }}
[[pipelines]]
source = "pump-01.mic"
window = 8192
hop = 4096
features = {{ kind = "sound" }}
model = {{ path = "builtin:sound_simulator" }}
"""


def mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(66, 0, 0, 0, 0)) >= 0  # PR_GET_MDWE


def test_agent_scores_under_memory_deny_write_execute(tmp_path: Path) -> None:
    if not mdwe_supported():
        pytest.fail("this kernel has no PR_SET_MDWE (Linux >= 6.3 needed for this check)")
    cfg = tmp_path / "agent.toml"
    state = tmp_path / "state"
    cfg.write_text(CONFIG.format(state=state))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        _, err = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    with sqlite3.connect(state / "buffer.db") as db:
        bodies = [json.loads(r[0]) for r in db.execute("SELECT body FROM features")]
    scored = {b["source_id"] for b in bodies if b.get("score") is not None}
    assert scored == {"pump-01.de_accel", "pump-01.mic"}, f"scored sources: {scored}"
