"""A process that runs the JSON sink, delivers one alert, says so and waits to be killed."""

from __future__ import annotations

import asyncio
import sys

from edge_agent.settings import parse
from edge_agent.sync.delivery import Delivered
from edge_agent.sync.mqtt.config import MqttConfig
from edge_agent.sync.mqtt.json_sink import JsonSink
from tests.sync.mqtt.support import FakeHandle, alert


async def main(url: str, gateway_id: str) -> None:
    sink = JsonSink(parse(MqttConfig, {"url": url, "keepalive": "2s"}), gateway_id)
    h = FakeHandle()
    h.commit("events", alert("anomaly_raised", "pump-1"))
    batch = h.next_batch()
    assert batch is not None
    while not isinstance(await sink.deliver(batch), Delivered):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    print("delivered", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
