"""Fixtures: one Mosquitto per test session (plain, password, TLS listeners), sinks, SCADA."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.settings import parse
from edge_agent.sync.mqtt.config import MqttConfig
from edge_agent.sync.mqtt.json_sink import JsonSink

from .broker import Mosquitto
from .support import Scada

GW = "gw-test"


@pytest.fixture(scope="session")
def mosq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    m.start()
    yield m
    m.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of this test only (it gets killed and restarted)."""
    m = Mosquitto(tmp_path / "mosquitto")
    m.start()
    yield m
    m.stop()


def mqtt_cfg(url: str, **kw: Any) -> MqttConfig:
    raw: dict[str, Any] = {"url": url, "keepalive": "5s", "backoff_initial": "50ms",
                           "backoff_max": "500ms", "publish_timeout": "3s"}
    raw.update(kw)
    return parse(MqttConfig, raw, "mqtt")


@pytest.fixture
async def scada_factory() -> AsyncIterator[Any]:
    made: list[Scada] = []

    def make(port: int, *topics: str, **kw: Any) -> Scada:
        s = Scada(port, topics or ("#",), **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
async def json_sink_factory() -> AsyncIterator[Any]:
    made: list[JsonSink] = []

    def make(url: str, gateway_id: str = GW, **kw: Any) -> JsonSink:
        s = JsonSink(mqtt_cfg(url, **kw), gateway_id)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()
