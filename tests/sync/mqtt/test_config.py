"""``[mqtt]`` parsing: key names, defaults, problems with key paths, secrets never shown."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge_agent.agent.config import parse as parse_agent
from edge_agent.agent.config import summary
from edge_agent.settings import ConfigError, parse, world_problems
from edge_agent.sync.mqtt import JsonSink, SparkplugSink, create_sink
from edge_agent.sync.mqtt.config import MqttConfig

ISSUE_EXAMPLE = """
[mqtt]
url = "mqtts://broker.plant:8884"
client_id = "plant1-line3-gw"
username = "edge"
password = "${MQTT_PASSWORD}"
ca_file = "/etc/edge-agent/ca.pem"
cert_file = "/etc/edge-agent/gw.pem"
key_file = "/etc/edge-agent/gw.key"
keepalive = "30s"
mode = "sparkplug"
topic_prefix = "edge/{gateway_id}"
[mqtt.sparkplug]
group_id = "plant1"
edge_node_id = "line3-gw"
primary_host_id = "scada"
"""


def problems(raw: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse(MqttConfig, raw, "mqtt")
    return [str(p) for p in err.value.problems]


def test_issue_example_parses(tmp_path: Path) -> None:
    cfg = parse(MqttConfig, tomllib.loads(ISSUE_EXAMPLE)["mqtt"], "mqtt")
    b = cfg.broker()
    assert (b.host, b.port, b.tls) == ("broker.plant", 8884, True)
    assert cfg.keepalive == 30.0 and cfg.sparkplug is not None
    assert cfg.sparkplug.primary_host_id == "scada"
    assert isinstance(create_sink(cfg, "gw", tmp_path), SparkplugSink)
    assert parse(MqttConfig, {}, "mqtt").broker().port == 1883
    json_cfg = parse(MqttConfig, {"url": "mqtt://h"}, "mqtt")
    assert isinstance(create_sink(json_cfg, "gw", tmp_path), JsonSink)
    assert json_cfg.prefix("gw-7") == "edge/gw-7"


def test_problems_have_key_paths() -> None:
    assert problems({"url": "http://h"}) == ["mqtt.url: must start with mqtt:// or mqtts://"]
    assert problems({"url": "mqtt://u:p@h"}) == [
        "mqtt.url: must not carry credentials (use username / password)"]
    assert problems({"mode": "sparkplug"}) == [
        'mqtt.sparkplug: mode = "sparkplug" needs a [mqtt.sparkplug] table']
    assert problems({"mode": "sparkplug", "sparkplug": {"group_id": "a/b"}}) == [
        "mqtt.sparkplug.group_id: must be non-empty and contain none of + # /"]
    assert problems({"mode": "mqtt5"})[0].startswith("mqtt.mode: must be one of")
    assert problems({"keepalive": "often"})[0].startswith("mqtt.keepalive: cannot read")
    assert problems({"sparkplug": {"group": "x"}}) == [
        "mqtt.sparkplug.group_id: is required", "mqtt.sparkplug.group: unknown key"]
    assert problems({"cert_file": "c.pem"}) == ["mqtt.cert_file: cert_file and key_file go "
                                                "together"]
    assert problems({"password": "x"}) == ["mqtt.password: needs username"]
    assert problems({"topic_prefix": "edge/#"}) == [
        "mqtt.topic_prefix: must not contain + or # nor end with /"]


def test_secret_never_shown_and_world_problems(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2-secret\n")
    cfg = parse(MqttConfig, {"username": "u", "password_file": str(pw)}, "mqtt")
    assert cfg.password is not None and cfg.password.reveal() == "hunter2-secret"
    assert "hunter2" not in repr(cfg) + str(cfg.model_dump()) + str(cfg)
    monkeypatch.delenv("NO_SUCH_MQTT_PW", raising=False)
    bad = parse(MqttConfig, {"username": "u", "password": "${NO_SUCH_MQTT_PW}",
                             "ca_file": str(tmp_path / "missing.pem")}, "mqtt")
    assert sorted(str(p) for p in world_problems(bad, "mqtt")) == [
        f"mqtt.ca_file: no such file: {tmp_path / 'missing.pem'}",
        "mqtt.password: environment variable NO_SUCH_MQTT_PW is not set"]


def test_agent_config_has_mqtt_only_with_a_table() -> None:
    base = {"drivers": [{"kind": "simulator", "name": "sim"}]}
    assert parse_agent(base).mqtt is None
    cfg = parse_agent({**base, **tomllib.loads(ISSUE_EXAMPLE)})
    assert cfg.mqtt is not None and cfg.mqtt.mode == "sparkplug"
    line = next(x for x in summary(cfg) if x.startswith("mqtt:"))
    assert "mqtts://broker.plant:8884" in line and "${MQTT_PASSWORD}" in line
    with pytest.raises(ConfigError) as err:
        parse_agent({**base, "mqtt": {"url": "tcp://x", "sparkplug": {"group_id": "g"}}})
    assert sorted(str(p) for p in err.value.problems) == [
        'mqtt.sparkplug: only used with mode = "sparkplug"',
        "mqtt.url: must start with mqtt:// or mqtts://"]
