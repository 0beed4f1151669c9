"""Modbus driver cost in block reads (125-register blocks), registers and values apart.

``--registers`` holding registers are polled every ``--interval``; ``--data-type uint16`` (the
default, as in ``bench_agent.py``) makes one value of each register, ``float32`` one value of
each pair (so 1,000 registers every 100 ms are 10,000 registers/s but 5,000 values/s). The
pymodbus server runs in a child process (its CPU is not counted); the driver runs under the
agent's ``run_driver`` here. Prints registers read and values delivered per second, the driver
process' CPU seconds per wall second and per value, its RSS.

    .venv/bin/python tests/bench/bench_modbus.py [--registers 1000] [--interval 0.1]
                                                 [--data-type uint16|float32]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import time

from _measure import cpu_s, readme_block, rss_mib, start_server_child  # tests/bench/_measure.py

from edge_agent.agent.supervisor import Backoff, run_driver
from edge_agent.drivers.base import DriverOutput
from edge_agent.drivers.modbus import Config, create
from edge_agent.records import weight
from edge_agent.settings import parse


async def serve(port: int, registers: int) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    regs = [(i * 7) & 0xFFFF for i in range(registers)]
    dev = SimDevice(1, simdata=[SimData(0, values=regs, datatype=DataType.REGISTERS)])
    srv = ModbusTcpServer(dev, address=("127.0.0.1", port))
    print("READY", flush=True)
    await srv.serve_forever()


def start_server(registers: int) -> tuple[subprocess.Popen[str], int]:
    return start_server_child(__file__, "--registers", str(registers))


async def bench(child: subprocess.Popen[str], port: int, registers: int, interval: float,
                seconds: float, data_type: str, readme: bool) -> None:
    try:
        await asyncio.sleep(0.3)
        width = 2 if data_type == "float32" else 1
        points = [{"sensor_id": f"r{a}", "address": a, "data_type": data_type,
                   "word_order": "little"} for a in range(0, registers - width + 1, width)]
        cfg = parse(Config, {"kind": "modbus", "name": "bench", "host": "127.0.0.1",
                             "port": port, "poll_interval": interval, "timeout": "1s",
                             "devices": [{"name": "d", "unit_id": 1, "points": points}]})
        drv = create(cfg)
        values = 0

        async def emit(out: DriverOutput) -> None:
            nonlocal values
            values += sum(map(weight, out))

        rss0 = rss_mib()
        task = asyncio.create_task(run_driver(drv, emit, poll_interval=interval,
                                              backoff=Backoff()))
        await asyncio.sleep(2.0)
        c0, v0, r0, t0 = cpu_s(), values, drv.health().reads, time.perf_counter()
        await asyncio.sleep(seconds)
        c1, v1, r1, t1 = cpu_s(), values, drv.health().reads, time.perf_counter()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        wall = t1 - t0
        blocks = drv.health().detail["blocks"]
        regs_per_poll = len(points) * width
        print(f"modbus: {len(points)} {data_type} points = {regs_per_poll} registers in {blocks} "
              f"blocks, poll {interval * 1000:g} ms, {wall:.1f} s")
        print(f"  registers read     {(r1 - r0) * regs_per_poll / wall:10.0f} /s")
        print(f"  values delivered   {(v1 - v0) / wall:10.0f} /s")
        print(f"  driver CPU         {(c1 - c0):10.2f} s  = {(c1 - c0) / wall:.3f} CPU-s per s"
              f" = {1e6 * (c1 - c0) / max(1, v1 - v0):.1f} us per value")
        print(f"  RSS                {rss_mib():10.1f} MiB (before driver {rss0:.1f} MiB)")
        print(f"  health             {drv.health().snapshot()['errors']}")
        if readme:
            readme_block("bench_modbus", "\n".join([
                "| `bench_modbus.py`: the driver alone | registers/s | values/s | CPU | "
                "µs/value | RSS |", "|---|---|---|---|---|---|",
                f"| {regs_per_poll:,} {data_type} registers every {interval * 1000:g} ms in "
                f"{blocks} block reads | {(r1 - r0) * regs_per_poll / wall:,.0f} | "
                f"{(v1 - v0) / wall:,.0f} | {(c1 - c0) / wall:.3f} CPU-s/s | "
                f"{1e6 * (c1 - c0) / max(1, v1 - v0):.1f} | {rss_mib():.0f} MiB |"]))
    finally:
        child.terminate()
        child.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registers", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--data-type", choices=("uint16", "float32"), default="uint16")
    ap.add_argument("--readme", action="store_true", help="also write README.md's figures")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve, a.registers))
    else:
        child, port = start_server(a.registers)
        asyncio.run(bench(child, port, a.registers, a.interval, a.seconds, a.data_type,
                          a.readme))


if __name__ == "__main__":
    main()
