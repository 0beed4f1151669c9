"""MQTT output of the agent: JSON alerts or a Sparkplug B edge node, as a buffer sink.

``create_sink`` builds the sink a ``[mqtt]`` table asks for; the buffer's delivery loop drives
it (:class:`~edge_agent.sync.delivery.Sink`) and the status page reads its ``stats()``. paho and
protobuf are imported only when a sink is made, so an agent without ``[mqtt]`` never loads them
(``[mqtt]`` parsing needs only :mod:`.config`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import MqttConfig, SparkplugConfig

if TYPE_CHECKING:
    from .json_sink import JsonSink
    from .sink import MqttSink
    from .sparkplug_sink import SparkplugSink

__all__ = ["JsonSink", "MqttConfig", "MqttSink", "SparkplugConfig", "SparkplugSink",
           "create_sink"]

_LAZY = {"JsonSink": ".json_sink", "MqttSink": ".sink", "SparkplugSink": ".sparkplug_sink"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_sink(cfg: MqttConfig, gateway_id: str, state_dir: Path,
                devices: Sequence[str] = (),
                sensor_devices: Mapping[str, str] | None = None) -> MqttSink:
    """The sink for ``cfg.mode``. Sparkplug: ``devices`` are born with the node (each analysed
    source), ``sensor_devices`` maps a PLC's sensor ids to its driver's name (that device, with
    a DDEATH when the driver disconnects); other data makes devices of its asset prefix."""
    if cfg.mode == "sparkplug":
        from .sparkplug_sink import SparkplugSink

        return SparkplugSink(cfg, gateway_id, state_dir, devices, sensor_devices)
    from .json_sink import JsonSink

    return JsonSink(cfg, gateway_id)
