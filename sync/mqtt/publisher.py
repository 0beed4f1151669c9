"""The MQTT sink driven over the buffer: its delivery handle, the generic loop, its stats.

:class:`MqttPublisher` registers the sink ``mqtt`` with the buffer (its own cursor: the rows
of the tables it consumes stay buffered until it has delivered them) and runs
:class:`~edge_agent.sync.runner.SinkRunner` over it. Batches are small and taken as soon as
rows are committed (no fill-up interval): an alert is on the broker milliseconds after its
commit. The runner's backoff only paces retries of a batch; reconnecting is the link's job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.backoff import Backoff
from edge_agent.sync.runner import DeliveryPolicy, SinkRunner

from . import create_sink
from .config import MqttConfig

if TYPE_CHECKING:
    from edge_agent.sync.buffer import Buffer

log = logging.getLogger(__name__)

__all__ = ["MqttPublisher", "policy"]


def policy(cfg: MqttConfig) -> DeliveryPolicy:
    return DeliveryPolicy(batch_max_rows=1000, batch_max_bytes=1024**2,
                          backoff=Backoff(initial=0.2, maximum=min(2.0, cfg.backoff_max)),
                          retry_after_max=10.0, slow_interval=10.0, interval=0.0)


class MqttPublisher:
    """``[mqtt]`` in the running agent: the sink, its buffer handle and its delivery loop."""

    def __init__(self, buffer: Buffer, cfg: MqttConfig, gateway_id: str, state_dir: Path,
                 devices: Sequence[str] = (),
                 sensor_devices: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.sink = create_sink(cfg, gateway_id, state_dir, devices, sensor_devices)
        handle = buffer.sink(self.sink.name, self.sink.tables)
        self.runner = SinkRunner(handle, self.sink, policy(cfg))

    async def run(self) -> None:
        """Connect and deliver until cancelled; never raises on broker trouble."""
        await self.sink.start()
        await self.runner.run()

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109 (a deadline, not a wait)
        """At shutdown: publish what is buffered for at most ``timeout`` s, then say goodbye
        (``offline`` / DDEATH + NDEATH) and disconnect."""
        try:
            await self.runner.flush(timeout)
        finally:
            await self.sink.close()

    def stats(self) -> dict[str, Any]:
        """The sink's state (connected, last_error, published …) and, under the uploader's
        key names (the status page and metrics read both alike), the delivery loop's."""
        r = self.runner
        return {**self.sink.stats(), "batches_sent": dict(r.delivered),
                "batches_failed": dict(r.retries), "rows_sent": r.rows_delivered,
                "bytes_sent": self.sink.bytes_sent, "last_success": r.last_success,
                "delivery_state": r.state}
