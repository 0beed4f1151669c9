"""OPC-UA driver cost: N nodes subscribed at a 100 ms publishing/sampling interval.

The server runs in a child process (so its CPU is not counted) and changes every node every
interval; the driver runs under the agent's ``run_driver`` in this process. Prints the driver
process' CPU seconds per wall second, its RSS, and the values delivered per second.

    .venv/bin/python tests/bench/bench_opcua.py [--nodes 1000] [--seconds 20]

``--restarts N`` instead measures what a full server restart costs: ``Server.init()`` with and
without asyncua's standard address-space shelf, and, over N full rebuilds of the test plant
server (new Server each time) with the driver under ``run_driver``, the time from the
server's start to the first fresh value.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import UTC

from _measure import collect, cpu_s, rss_mib, start_server_child  # tests/bench/_measure.py

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import DriverOutput
from edge_agent.drivers.opcua import Config, create
from edge_agent.records import Reading, expand, weight
from edge_agent.settings import parse


async def serve(port: int, n: int, interval: float) -> None:
    from asyncua import Server, ua
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    s = Server()
    await s.init()
    s.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await s.register_namespace("urn:bench")
    obj = await s.nodes.objects.add_object(idx, "Bench")
    ids = []
    for i in range(n):
        v = await obj.add_variable(ua.NodeId.from_string(f"ns={idx};s=v{i}"), f"{idx}:v{i}", 0.0)
        ids.append(v.nodeid)
    await s.start()
    print("READY", flush=True)
    t = 0
    next_t = t_report = time.monotonic()
    written = 0
    while True:
        t += 1
        now = ua.DateTime.now(UTC)
        for i, nodeid in enumerate(ids):
            await s.write_attribute_value(nodeid, ua.DataValue(
                ua.Variant(float(t + i)), SourceTimestamp=now, ServerTimestamp=now))
        written += len(ids)
        next_t += interval
        mono = time.monotonic()
        if mono - t_report >= 5.0:
            print(f"RATE {written / (mono - t_report):.0f}", flush=True)
            written, t_report = 0, mono
        await asyncio.sleep(max(0.0, next_t - mono))


def start_server(n: int, interval: float) -> tuple[subprocess.Popen[str], int]:
    return start_server_child(__file__, "--nodes", str(n), "--interval", str(interval))


async def bench(child: subprocess.Popen[str], port: int, n: int, seconds: float,
                interval: float) -> None:
    try:
        rates = collect(child, "RATE")
        ms = f"{interval * 1000:g}ms"
        cfg = parse(Config, {"kind": "opcua", "name": "bench",
                             "endpoint": f"opc.tcp://127.0.0.1:{port}/",
                             "nodes": [{"sensor_id": f"v{i}", "node_id": f"ns=2;s=v{i}",
                                        "publishing_interval": ms, "sampling_interval": ms,
                                        "queue_size": 10}
                                       for i in range(n)]})
        drv = create(cfg)
        count = 0
        all_in = asyncio.Event()

        async def emit(out: DriverOutput) -> None:
            nonlocal count
            count += sum(map(weight, out))
            if count >= n:
                all_in.set()

        rss0 = rss_mib()
        task = asyncio.create_task(run_driver(drv, emit, poll_interval=None, backoff=Backoff()))
        await asyncio.wait_for(all_in.wait(), 60)  # initial values in: subscriptions up
        await asyncio.sleep(2.0)  # settle
        c0, v0, t0 = cpu_s(), count, time.perf_counter()
        await asyncio.sleep(seconds)
        c1, v1, t1 = cpu_s(), count, time.perf_counter()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        wall = t1 - t0
        print(f"opcua: {n} nodes @ {ms}, {wall:.1f} s")
        achieved = rates[-1] if rates else float("nan")
        print(f"  values delivered   {(v1 - v0) / wall:10.0f} /s (nominal {n / interval:.0f}/s; "
              f"server managed {achieved:.0f} changes/s)")
        print(f"  driver CPU         {(c1 - c0):10.2f} s  = {(c1 - c0) / wall:.3f} CPU-s per s")
        print(f"  CPU per value      {(c1 - c0) / max(1, v1 - v0) * 1e6:10.1f} us")
        print(f"  RSS                {rss_mib():10.1f} MiB (before driver {rss0:.1f} MiB)")
        print(f"  health             {drv.health().snapshot()['errors']}")
    finally:
        child.terminate()
        child.wait(5)


async def bench_restarts(restarts: int) -> None:
    import tempfile
    from pathlib import Path

    from asyncua import Server

    from tests.drivers.opcua_server import PlantServer, build_standard_shelf, nid

    # every restart makes asyncua's client log a publish traceback and the supervisor a warning
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    logging.getLogger("edge_agent").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shelf = await build_standard_shelf(Path(tmp))
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        await Server().init()
        t_plain = time.perf_counter() - t0
        inits = []
        for _ in range(5):
            t0 = time.perf_counter()
            await Server().init(shelf)
            inits.append(time.perf_counter() - t0)
        print(f"Server.init(): from code {t_plain:.2f} s; shelf build (once) {t_build:.2f} s; "
              f"from shelf median {sorted(inits)[2]:.3f} s")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        plant = PlantServer(port, shelf=shelf)
        await plant.start()
        cfg = parse(Config, {"kind": "opcua", "name": "bench", "endpoint": plant.url,
                             "connection_check": "500ms", "timeout": "2s",
                             "nodes": [{"sensor_id": "temp", "node_id": nid("Temp"),
                                        "publishing_interval": "100ms"}]})
        latest = 0.0
        fresh = asyncio.Event()

        async def emit(out: DriverOutput) -> None:
            nonlocal latest
            for r in expand(out):   # Good scalar values come as reading blocks
                if isinstance(r, Reading) and r.timestamp > latest:
                    latest = r.timestamp
                    fresh.set()

        task = asyncio.create_task(run_driver(create(cfg), emit, poll_interval=None,
                                              backoff=Backoff(initial=0.05, maximum=0.5)))
        await asyncio.wait_for(fresh.wait(), 30)
        starts, recover = [], []
        for _ in range(restarts):
            await plant.stop()
            t_wall, t0 = time.time(), time.perf_counter()
            await plant.start()
            starts.append(time.perf_counter() - t0)
            while latest < t_wall:
                fresh.clear()
                await asyncio.wait_for(fresh.wait(), 30)
            recover.append(time.perf_counter() - t0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await plant.stop()
        starts.sort()
        recover.sort()
        print(f"{restarts} full restarts: server start median {starts[len(starts) // 2]:.3f} s "
              f"max {starts[-1]:.3f} s; start -> fresh data median "
              f"{recover[len(recover) // 2]:.2f} s, max {recover[-1]:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--restarts", type=int, default=0)
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.restarts:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))  # the repo root, for tests.drivers.opcua_server
        asyncio.run(bench_restarts(a.restarts))
    elif a.serve:
        asyncio.run(serve(a.serve, a.nodes, a.interval))
    else:
        child, port = start_server(a.nodes, a.interval)
        asyncio.run(bench(child, port, a.nodes, a.seconds, a.interval))


if __name__ == "__main__":
    main()
