"""Outage: the receiver is down for a while, the agent keeps ingesting; then it comes back and
everything drains, oldest first, exactly once."""

from __future__ import annotations

import asyncio
import time

from edge_agent.records import Event
from edge_agent.sync.buffer import Buffer
from tests.receiver import IngestReceiver

from .conftest import T0, Running, fast_uploader_cfg, readings


async def test_outage_then_drain_in_order(buffer: Buffer, rx: IngestReceiver) -> None:
    cfg = fast_uploader_cfg(rx.url, batch_max_rows=1000, backoff_max=0.4)
    rx.down()
    async with Running(buffer, cfg) as up:
        for k in range(20):  # ~2 s of production while the receiver is down
            await buffer.put(readings(500, sensor=f"s{k % 4}", t0=T0 + k * 10))
            if k == 10:
                await buffer.put([Event("anomaly_raised", "pump", T0 + k * 10, "critical")])
            await asyncio.sleep(0.1)
        assert len(rx.requests) == 0 and up.failed["connection"] >= 3
        st = buffer.stats()
        assert st["rows_queued_total"] == 10_001
        assert float(st["oldest_unsent_age_s"]) > 3000  # type: ignore[arg-type]
        t_up = time.monotonic()
        rx.up()
        assert await up.wait_until(lambda u: u.rows_sent == 10_001, 30)
        drain_s = time.monotonic() - t_up
    assert len(rx.readings) == 10_000 and len(rx.events) == 1
    assert rx.duplicates == 0 and rx.conflicts == 0 and rx.rows_stored == 10_001
    ok = [q for q in rx.requests if q.status == 200]
    seqs = [q.seq for q in ok]
    assert seqs == sorted(seqs)
    firsts = [q.first_reading[0] for q in ok if q.first_reading]
    assert firsts == sorted(firsts)  # oldest first
    # the event was committed mid-outage but is not stuck behind the backlog of readings
    assert ok[0].n_events == 1 or ok[1].n_events == 1
    assert buffer.stats()["rows_queued_total"] == 0
    assert drain_s < 10
