"""Whole-agent benchmark: a real ``edge-agent run`` against loopback servers and the contract
receiver (``tests/receiver.py``), uploader on. Prints, per workload, with the issue's goals:

* coverage — values that reached the receiver / values produced in the measuring window. The
  OPC-UA server (a child process) writes the tick number to every node every tick, each value
  stamped when it is written, and reports each tick it completed, so "produced" is what the
  server really wrote in the ticks that started in the window, and "received" counts the values
  of those ticks; Modbus registers are polled, so "produced" is registers x (window / poll
  interval): every poll that should have happened;
* CPU % of one core used by the agent process (all its threads) in the window, and that CPU
  per value received (µs/value: the figure that does not depend on what the server managed),
  peak RSS;
* tick -> commit latency p50/p99: when each reading committed to the agent's buffer, from the
  buffer's commit-lag histogram (sync/lag.py, 5 ms buckets; the agent runs through
  ``_agent_child.py``, which only answers for that histogram), over the measuring window;
* tick -> receipt latency p50/p99 (receipt = the receiver's arrival time of the HTTP request):
  tick -> commit plus the uploader's ``interval`` (1 s as shipped: a batch fills up after the
  buffer ran dry; ``--upload-every`` changes it);
* shutdown: SIGTERM -> exit, seconds.

    .venv/bin/python tests/bench/bench_agent.py [--seconds 25] [--only opcua-1000x100ms ...]

Servers and the receiver run outside the agent process, so their CPU is not counted. On a
loaded machine the servers fall behind (fewer values produced) and late polls lower the Modbus
coverage: compare µs/value between runs, and coverage only from a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from _measure import collect, readme_block, start_server_child  # tests/bench/_measure.py

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.receiver import IngestReceiver  # noqa: E402

CHILD = str(Path(__file__).with_name("_agent_child.py"))
TICK = os.sysconf("SC_CLK_TCK")
STOP_LIMIT = 30.0  # SIGTERM -> exit; beyond this the agent is killed and "inf" printed


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str          # opcua | modbus
    count: int         # nodes or registers
    interval: float    # change / poll interval, s
    goal: str


WORKLOADS = [
    Workload("opcua-1000x100ms", "opcua", 1000, 0.1, ">= 99.9 % at <= 15 % CPU"),
    Workload("opcua-1000x1s", "opcua", 1000, 1.0, "reference for 5,000 x 1 s"),
    Workload("opcua-5000x1s", "opcua", 5000, 1.0, "<= 5x the CPU of 1,000 x 1 s"),
    Workload("modbus-1000x100ms", "modbus", 1000, 0.1, ">= 99.9 % at <= 8 % CPU"),
    Workload("modbus-5000x100ms", "modbus", 5000, 0.1, "on schedule (100 % of polls)"),
]


# -- servers (child processes) ----------------------------------------------------------------
async def serve_opcua(port: int, n: int, interval: float) -> None:
    """Every node gets the tick number, stamped with the time it is written (as a PLC stamps a
    change: writing 5,000 nodes takes this server most of a second, which a stamp taken once
    per tick would count as agent latency); prints ``TICK <epoch of the tick's start>`` once a
    tick's writes are all done."""
    from asyncua import Server, ua
    logging.disable(logging.CRITICAL)
    s = Server()
    await s.init()
    s.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await s.register_namespace("urn:bench")
    obj = await s.nodes.objects.add_object(idx, "Bench")
    ids = [(await obj.add_variable(ua.NodeId.from_string(f"ns={idx};s=v{i}"), f"{idx}:v{i}",
                                   0.0)).nodeid for i in range(n)]
    await s.start()
    print("READY", flush=True)
    tick, next_t = 0, time.monotonic()
    while True:
        tick += 1
        start, value = time.time(), ua.Variant(float(tick))
        for i, nodeid in enumerate(ids):
            # asyncua types timestamps as its DateTime subclass
            stamp = cast(ua.DateTime, datetime.now(UTC))
            await s.write_attribute_value(nodeid, ua.DataValue(
                value, SourceTimestamp=stamp, ServerTimestamp=stamp))
            if i % 200 == 199:  # a write never waits: let the server publish meanwhile
                await asyncio.sleep(0)
        print(f"TICK {start:.6f}", flush=True)
        next_t += interval
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))


async def serve_modbus(port: int, registers: int) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice
    logging.disable(logging.CRITICAL)
    dev = SimDevice(1, simdata=[SimData(0, values=[i & 0xFFFF for i in range(registers)],
                                        datatype=DataType.REGISTERS)])
    srv = ModbusTcpServer(dev, address=("127.0.0.1", port))
    print("READY", flush=True)
    await srv.serve_forever()


# -- the agent ----------------------------------------------------------------------------------
def config_toml(w: Workload, port: int, rx: IngestReceiver, state: Path,
                upload_every: float | None = None) -> str:
    interval = "" if upload_every is None else f'interval = "{upload_every * 1000:g}ms"\n'
    head = f"""
[agent]
gateway_id = "bench"
state_dir = "{state}"
log_level = "warning"
shutdown_timeout = "10s"

[uploader]
url = "{rx.url}"
api_key = "{rx.api_key}"
{interval}
[web]
enabled = false

[[drivers]]
"""
    if w.kind == "opcua":
        ms = f"{w.interval * 1000:g}ms"
        nodes = "".join(f'\n[[drivers.nodes]]\nsensor_id = "v{i}"\nnode_id = "ns=2;s=v{i}"\n'
                        f'publishing_interval = "{ms}"\nsampling_interval = "{ms}"\n'
                        f'queue_size = 10\n' for i in range(w.count))
        return head + (f'kind = "opcua"\nname = "plc"\nendpoint = "opc.tcp://127.0.0.1:{port}/"'
                       f'\n{nodes}')
    points = "".join(f'\n[[drivers.devices.points]]\nsensor_id = "r{a}"\naddress = {a}\n'
                     for a in range(w.count))
    return head + (f'kind = "modbus"\nname = "plc"\nhost = "127.0.0.1"\nport = {port}\n'
                   f'poll_interval = "{w.interval * 1000:g}ms"\ntimeout = "1s"\n'
                   f'\n[[drivers.devices]]\nname = "d"\nunit_id = 1\n{points}')


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ts_epoch(s: str, cache: dict[str, float]) -> float:
    v = cache.get(s)
    if v is None:
        v = cache[s] = datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC).timestamp()
    return v


def arrivals(rx: IngestReceiver) -> list[tuple[str, float, object]]:
    """(timestamp, receipt time, value or None) per stored reading: stored keys are in arrival
    order and each accepted request stored ``n_readings`` of them (the uploader sends one
    request at a time); values only when the receiver kept the bodies."""
    with rx.cond:
        stored = list(rx.readings.items())
        logs = [r for r in rx.requests if r.outcome == "accepted"]
    out: list[tuple[str, float, object]] = []
    i = 0
    for r in logs:
        out += [(k[0], r.time, body.get("value")) for k, body in stored[i:i + r.n_readings]]
        i += r.n_readings
    if i != len(stored):
        raise RuntimeError(f"{len(stored)} stored readings but {i} in accepted requests")
    return out


def commit_lag(agent: subprocess.Popen[str]) -> dict[int, int]:
    """The agent's cumulative commit-lag histogram: 5 ms bucket -> readings."""
    assert agent.stdin is not None and agent.stdout is not None
    agent.stdin.write("LAG\n")
    agent.stdin.flush()
    while not (line := agent.stdout.readline()).startswith("LAG "):
        if not line:
            raise RuntimeError("the agent exited")
    return {int(b): int(n) for b, n in json.loads(line[4:])}


def hist_pct(hist: dict[int, int], q: float) -> float:
    """The q-quantile (ms, upper edge of its 5 ms bucket) of a bucket -> count histogram."""
    n, seen = sum(hist.values()), 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= q * n:
            return 5.0 * (b + 1)
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_workload(w: Workload, seconds: float, warmup: float,
                 upload_every: float | None = None) -> dict[str, float]:
    args = ["--kind", w.kind, "--count", str(w.count), "--interval", str(w.interval)]
    server, port = start_server_child(__file__, *args)
    ticks = collect(server, "TICK")
    with tempfile.TemporaryDirectory() as tmp, IngestReceiver(
            "bench-key", keep_bodies=w.kind == "opcua") as rx:  # OPC-UA values: tick numbers
        cfg = Path(tmp) / "agent.toml"
        cfg.write_text(config_toml(w, port, rx, Path(tmp) / "state", upload_every))
        agent = subprocess.Popen([sys.executable, CHILD, str(cfg)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            if not rx.wait_for(lambda r: len(r.readings) >= w.count, 90):
                raise RuntimeError(f"{w.name}: no data at the receiver after 90 s")
            time.sleep(warmup)
            c0, t0, h0 = proc_cpu_s(agent.pid), time.time(), commit_lag(agent)
            time.sleep(seconds)
            c1, t1, h1 = proc_cpu_s(agent.pid), time.time(), commit_lag(agent)
            hwm = proc_hwm_mib(agent.pid)
            time.sleep(3.0 + w.interval)  # what was read in the window reaches the receiver
            s0 = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(STOP_LIMIT)
                stop_s = time.monotonic() - s0
            except subprocess.TimeoutExpired:
                stop_s = float("inf")  # killed below
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            server.terminate()
            server.wait(10)
        got = arrivals(rx)
    cache: dict[str, float] = {}
    lat = []
    n_in = 0
    # OPC-UA: the values of the ticks that started in the window (value = tick number, the
    # n-th TICK line is tick n); Modbus: the values stamped in the window
    in_window = {float(i + 1) for i, t in enumerate(ticks) if t0 <= t < t1}
    for ts, at, value in got:
        t = ts_epoch(ts, cache)
        if (value in in_window) if w.kind == "opcua" else (t0 <= t < t1):
            n_in += 1
            lat.append(at - t)
    if w.kind == "opcua":
        produced = len(in_window) * w.count
    else:
        produced = round((t1 - t0) / w.interval) * w.count
    window = {b: h1.get(b, 0) - h0.get(b, 0) for b in h1}
    return {"coverage": 100.0 * n_in / max(1, produced), "produced": produced,
            "c50": hist_pct(window, 0.5), "c99": hist_pct(window, 0.99),
            "received": n_in, "cpu": 100.0 * (c1 - c0) / (t1 - t0), "rss": hwm,
            "us_per_value": 1e6 * (c1 - c0) / max(1, n_in),
            "p50": 1000 * pct(lat, 0.5), "p99": 1000 * pct(lat, 0.99), "stop": stop_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--only", nargs="*", default=None, help="workload names")
    ap.add_argument("--upload-every", type=float, default=None,
                    help="[uploader] interval, s (default: as shipped)")
    ap.add_argument("--readme", action="store_true",
                    help="also write the table into README.md (block bench_agent)")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="opcua", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--interval", type=float, default=0.1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        if a.kind == "opcua":
            asyncio.run(serve_opcua(a.serve, a.count, a.interval))
        else:
            asyncio.run(serve_modbus(a.serve, a.count))
        return
    every = "as shipped" if a.upload_every is None else f"{a.upload_every:g} s"
    load = os.getloadavg()[0]
    print(f"whole agent, {a.seconds:g} s windows after {a.warmup:g} s warm-up, uploader on "
          f"(contract receiver, interval {every}), {os.cpu_count()} cores; "
          f"load {load:.1f}; goal p99 tick -> commit <= 250 ms")
    print(f"{'':56} {'tick->commit':>15} {'tick->receipt':>15}")
    print(f"{'workload':20} {'coverage':>9} {'CPU %':>7} {'us/value':>8} {'peak RSS':>9} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'p50 ms':>7} {'p99 ms':>7} {'stop s':>6}  goal")
    rows = []
    results = {}
    for w in WORKLOADS:
        if a.only and w.name not in a.only:
            continue
        r = results[w.name] = run_workload(w, a.seconds, a.warmup, a.upload_every)
        print(f"{w.name:20} {r['coverage']:8.2f}% {r['cpu']:7.1f} {r['us_per_value']:8.1f} "
              f"{r['rss']:7.0f}MB {r['c50']:7.0f} {r['c99']:7.0f} "
              f"{r['p50']:7.0f} {r['p99']:7.0f} {r['stop']:6.1f}  {w.goal}  "
              f"({r['received']:.0f}/{r['produced']:.0f} values)", flush=True)
        rows.append(f"| {w.name} | {r['coverage']:.2f} % | {r['cpu']:.1f} % | "
                    f"{r['us_per_value']:.1f} | {r['rss']:.0f} MB | {r['c99']:.0f} ms | "
                    f"{r['p99']:.0f} ms | {r['stop']:.1f} s | {w.goal} |")
    if "opcua-1000x1s" in results and "opcua-5000x1s" in results:
        ratio = results["opcua-5000x1s"]["cpu"] / max(1e-9, results["opcua-1000x1s"]["cpu"])
        print(f"OPC-UA 5,000 x 1 s costs {ratio:.1f}x the CPU of 1,000 x 1 s (goal <= 5x)")
    if a.readme:
        readme_block("bench_agent", "\n".join([
            f"`bench_agent.py` ({a.seconds:g} s windows, uploader interval {every}, load "
            f"average {load:.1f} at the start):", "",
            "| workload | coverage | CPU (one core) | µs/value | peak RSS | p99 tick → commit "
            "| p99 tick → receipt | SIGTERM → exit | goal |",
            "|---|---|---|---|---|---|---|---|---|", *rows]))

if __name__ == "__main__":
    main()
