"""OPC-UA driver cost: N nodes subscribed at a 100 ms publishing/sampling interval.

The server runs in a child process (so its CPU is not counted) and changes every node every
interval; the driver runs under the agent's ``run_driver`` in this process. Prints the driver
process' CPU seconds per wall second, its RSS, and the values delivered per second.

    .venv/bin/python tests/bench/bench_opcua.py [--nodes 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import socket
import subprocess
import sys
import time
from datetime import UTC

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.confkit import build
from edge_agent.drivers.base import DriverOutput
from edge_agent.drivers.opcua import Config, create


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--nodes", str(n),
                              "--interval", str(interval)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip() == "READY", line
    return child, port


async def bench(child: subprocess.Popen[str], port: int, n: int, seconds: float,
                interval: float) -> None:
    try:
        rates: list[float] = []

        def read_rates() -> None:
            assert child.stdout is not None
            for text in child.stdout:
                if text.startswith("RATE "):
                    rates.append(float(text.split()[1]))

        asyncio.get_running_loop().run_in_executor(None, read_rates)
        ms = f"{interval * 1000:g}ms"
        cfg = build(Config, {"kind": "opcua", "name": "bench",
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
            count += len(out)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve, a.nodes, a.interval))
    else:
        child, port = start_server(a.nodes, a.interval)
        asyncio.run(bench(child, port, a.nodes, a.seconds, a.interval))


if __name__ == "__main__":
    main()
