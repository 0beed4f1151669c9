"""Child process for the crash campaign: Buffer + Uploader + a deterministic reading generator.

Prints ``ready`` once the buffer is open, then ``ack <first_ts_us> <n>`` after every put that
returned (the readings are ``sensor s{j % 5}`` at ``first_ts_us + j`` µs, j < n, value j).
With ``--drain`` it generates nothing, sends everything buffered, closes cleanly and prints
``drained <rows left>``. With ``--mirror-url`` a second sink, ``mirror`` (events and readings),
sends to a second receiver, independently of the uploader.

    python -m tests.sync.crash_child --db X --url URL --api-key K [--mirror-url URL] [--drain]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from edge_agent.records import Reading
from edge_agent.settings import Secret
from edge_agent.sync.buffer import Buffer, BufferConfig
from edge_agent.sync.runner import SinkRunner
from edge_agent.sync.uploader import HttpSink, Uploader, UploaderConfig, policy

PER_PUT = 100
SENSORS = 5


def batch(first_us: int, n: int) -> list[Reading]:
    return [Reading(f"s{j % SENSORS}", "temperature", float(j), "degC", (first_us + j) / 1e6)
            for j in range(n)]


async def main(args: argparse.Namespace) -> None:
    buf = Buffer(Path(args.db), BufferConfig(commit_interval=0.002))
    cfg = UploaderConfig(url=args.url, api_key=Secret(args.api_key), batch_max_rows=2000,
                         interval=0.02, backoff_initial=0.05,
                         backoff_max=0.3, timeout=2.0)
    up = Uploader(buf, cfg, args.gateway_id)
    mirror: SinkRunner | None = None
    if args.mirror_url:  # registered with the uploader, before the buffer runs any sink
        mcfg = UploaderConfig(url=args.mirror_url, api_key=cfg.api_key, batch_max_rows=700,
                              interval=cfg.interval, backoff_initial=cfg.backoff_initial,
                              backoff_max=cfg.backoff_max, timeout=cfg.timeout)
        sink = HttpSink(mcfg, args.gateway_id, name="mirror",
                        tables=frozenset(("events", "readings")))
        mirror = SinkRunner(buf.sink("mirror", sink.tables, key_prefix=args.gateway_id + "-m"),
                            sink, policy(mcfg))
    await buf.start()
    print("ready", flush=True)
    if args.drain:
        await up.flush(60.0)
        if mirror is not None:
            await mirror.flush(60.0)
        left = buf.stats()["rows_queued_total"]
        await buf.close()
        print(f"drained {left}", flush=True)
        return
    task = asyncio.create_task(up.run())
    mtask = asyncio.create_task(mirror.run()) if mirror is not None else task
    last = 0
    while True:
        first = max(time.time_ns() // 1000, last + PER_PUT)
        await buf.put(batch(first, PER_PUT))
        print(f"ack {first} {PER_PUT}", flush=True)
        last = first
        await asyncio.sleep(args.pause)
        for t in (task, mtask):
            if t.done():
                t.result()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--mirror-url")
    ap.add_argument("--gateway-id", default="crash-gw")
    ap.add_argument("--pause", type=float, default=0.01)
    ap.add_argument("--drain", action="store_true")
    asyncio.run(main(ap.parse_args()))
