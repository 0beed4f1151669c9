"""The running agent (`edge-agent run`, a subprocess) publishing to a real Mosquitto.

The simulated pump develops a bearing fault from second 2: the SCADA client hears the birth,
the ``anomaly_raised`` alert of ``pump-01.de_accel`` (hysteresis: after ``raise_after`` windows
over threshold), the retained alarm state, other events, and ``offline`` after ``kill -9``.
A second run in Sparkplug mode is decoded by the test host application.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.sync.mqtt import sparkplug_b_pb2 as pb

from .broker import Mosquitto
from .sp_host import Host
from .support import Scada

pytestmark = pytest.mark.timeout(90)

CONFIG = """
[agent]
gateway_id = "{gw}"
state_dir = "{state}"
[metrics]
enabled = false
[mqtt]
url = "{url}"
keepalive = "5s"
{extra}
[[drivers]]
kind = "simulator"
name = "sim"
asset = "pump-01"
block = "0.25s"
microphone = false
fault = {{ kind = "outer_race", onset = "2s", growth = "2s" }}
[[pipelines]]
source = "pump-01.de_accel"
features = {{ kind = "vibration" }}
model = {{ path = "builtin:vibration_simulator" }}
alerts = {{ raise_after = 3, clear_after = 10 }}
"""


def start_agent(cfg: Path) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("edge-agent")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge_agent.agent.cli"]
    return subprocess.Popen([*cmd, "run", "-c", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})


def stop(proc: subprocess.Popen[str], sig: int) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err or ""


def test_agent_alerts_reach_the_scada_and_offline_after_kill_9(mosq: Mosquitto,
                                                              tmp_path: Path) -> None:
    gw, p = "agent-json", "edge/agent-json"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(gw=gw, state=tmp_path / "state", url=mosq.url, extra=""))
    scada = Scada(mosq.port, (f"{p}/#",))
    proc = start_agent(cfg)
    try:
        assert scada.wait_for(lambda g: any(t == f"{p}/status" for _, t, _, _ in g), 30)
        assert scada.wait_for(lambda g: any("/alerts/pump-01.de_accel" in t
                                            for _, t, _, _ in g), 40), stop(proc, 9)[-3000:]
        assert proc.poll() is None
        late = Scada(mosq.port, (f"{p}/alarms/#", f"{p}/status"))
        assert late.wait_for(lambda g: len(g) >= 2, 10)
        retained = dict(late.on(f"{p}/"))
        late.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert scada.wait_for(lambda g: json.loads([b for _, t, b, _ in g
                                                    if t == f"{p}/status"][-1])["state"]
                              == "offline", 20)
    finally:
        if proc.poll() is None:
            proc.kill()
        scada.close()
    (topic, alert), = scada.on(f"{p}/alerts/")
    assert topic == f"{p}/alerts/pump-01.de_accel"
    assert alert["kind"] == "anomaly_raised" and alert["source_id"] == "pump-01.de_accel"
    assert alert["score"] > alert["threshold"] and alert["model"]["name"]
    assert alert["event_id"] and alert["severity"] == "warning"
    assert retained[f"{p}/alarms/pump-01.de_accel"]["active"] is True
    assert retained[f"{p}/status"]["state"] == "online"
    assert "agent_started" in {t.rsplit("/", 1)[1] for t, _ in scada.on(f"{p}/events/")}
    states = [b["state"] for _, b in scada.on(f"{p}/status")]
    assert states[0] == "online" and states[-1] == "offline"


def alarm_born(got: list[tuple[float, str, bytes, bool]]) -> bool:
    return any("/DBIRTH/gw/pump-01.de_accel" in t and
               any(m.name == "alarm/active" for m in pb.Payload.FromString(b).metrics)
               for _, t, b, _ in got)


def test_agent_as_sparkplug_edge_node(mosq: Mosquitto, tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    extra = 'mode = "sparkplug"\n[mqtt.sparkplug]\ngroup_id = "g-agent"\nedge_node_id = "gw"\n'
    cfg.write_text(CONFIG.format(gw="agent-sp", state=tmp_path / "state", url=mosq.url,
                                 extra=extra))
    host = Host(mosq.port, "g-agent")
    proc = start_agent(cfg)
    try:
        assert host.wait_for(alarm_born, 40)  # the fault raised the alarm metric
        err = stop(proc, signal.SIGTERM)
        assert proc.returncode == 0, err[-3000:]
        assert host.wait_for(lambda g: any("/NDEATH/" in t for _, t, _, _ in g), 10)
    finally:
        if proc.poll() is None:
            proc.kill()
        host.close()
    kinds = host.kinds()
    assert kinds[0] == "NBIRTH" and "DBIRTH:pump-01.de_accel" in kinds[:4]
    v = host.check()
    assert v.errors == [] and v.deaths == [v.bdseq]
    assert v.values[("pump-01.de_accel", "anomaly/score")]
    assert any(val for val, _ in v.values.get(("pump-01.de_accel", "alarm/active"), []))
    assert ("pump-01", "bearing_temp") in v.values  # process values of the simulated PLC


def test_agent_alarm_raised_then_cleared_when_the_part_is_replaced(mosq: Mosquitto,
                                                                   tmp_path: Path) -> None:
    """The fault lasts 6 s (the simulated bearing is then replaced): the control room hears
    exactly one raise, then one clear, and the retained alarm state ends inactive."""
    gw, p = "agent-clear", "edge/agent-clear"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(gw=gw, state=tmp_path / "state", url=mosq.url, extra="")
                   .replace('growth = "2s" }', 'growth = "2s", repaired_after = "6s" }')
                   .replace("clear_after = 10", 'clear_after = "1s", clear_ratio = 1.0'))
    scada = Scada(mosq.port, (f"{p}/alerts/#", f"{p}/alarms/#"))
    proc = start_agent(cfg)
    try:
        def cleared(g: list[tuple[float, str, bytes, bool]]) -> bool:
            return any(json.loads(b).get("kind") == "anomaly_cleared"
                       for _, t, b, _ in g if "/alerts/" in t)
        assert scada.wait_for(cleared, 60), stop(proc, 9)[-3000:]
        stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        scada.close()
    kinds = [a["kind"] for _, a in scada.on(f"{p}/alerts/")]
    assert kinds == ["anomaly_raised", "anomaly_cleared"], kinds
    states = [a["active"] for _, a in scada.on(f"{p}/alarms/")]
    assert states[0] is True and states[-1] is False
