"""reload.plan: what a new configuration changes in a running agent, before anything is touched."""

from __future__ import annotations

from typing import Any

from edge_agent.agent.config import AgentConfig, parse
from edge_agent.agent.reload import plan


def cfg(**over: Any) -> AgentConfig:
    raw: dict[str, Any] = {
        "agent": {"gateway_id": "gw", "state_dir": "/var/lib/a"},
        "web": {"listen": "127.0.0.1:8080"},
        "drivers": [{"kind": "simulator", "name": "sim", "asset": "pump-01"},
                    {"kind": "simulator", "name": "sim2", "asset": "fan-02"}],
        "pipelines": [{"source": "pump-01.de_accel", "features": {"kind": "vibration"},
                       "threshold": 0.5}],
    }
    for k, v in over.items():
        raw[k] = v
    return parse(raw)


def test_nothing_changed() -> None:
    p = plan(cfg(), cfg())
    assert not p.changed and p.needs_restart == [] and p.effective == cfg()


def test_drivers_and_pipelines_by_name() -> None:
    new = cfg(drivers=[{"kind": "simulator", "name": "sim", "asset": "pump-01"},
                       {"kind": "simulator", "name": "sim3", "asset": "fan-02"}],
              pipelines=[{"source": "pump-01.de_accel", "features": {"kind": "vibration"},
                          "threshold": 0.7},
                         {"source": "fan-02.mic", "features": {"kind": "sound"},
                          "window": 4096}])
    p = plan(cfg(), new)
    assert (p.drivers_restarted, p.drivers_stopped, p.drivers_started) == ([], ["sim2"],
                                                                           ["sim3"])
    assert (p.pipelines_rebuilt, p.pipelines_added) == (["pump-01.de_accel"], ["fan-02.mic"])
    changed = cfg(drivers=[{"kind": "simulator", "name": "sim", "asset": "pump-01",
                            "seed": 7}, {"kind": "simulator", "name": "sim2",
                                         "asset": "fan-02"}])
    assert plan(cfg(), changed).drivers_restarted == ["sim"]


def test_settings_that_need_a_restart_keep_their_running_value() -> None:
    old = cfg()
    new = cfg(agent={"gateway_id": "gw2", "state_dir": "/tmp/x", "log_level": "debug"},
              web={"listen": "127.0.0.1:9090"}, buffer={"path": "other.db"},
              uploader={"url": "https://ingest.example/v1", "api_key": "k" * 16})
    p = plan(old, new)
    assert p.needs_restart == ["buffer.path", "web.listen", "agent.state_dir",
                               "agent.gateway_id"]
    eff = p.effective
    assert (eff.buffer, eff.web) == (old.buffer, old.web)
    assert (eff.agent.state_dir, eff.agent.gateway_id) == ("/var/lib/a", "gw")
    assert eff.agent.log_level == "debug" and p.applied == ["agent.log_level"]
    assert p.uploader_restarted and eff.uploader == new.uploader
    assert p.details()["needs_restart"] == p.needs_restart
