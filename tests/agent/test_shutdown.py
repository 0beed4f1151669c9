"""A stop that always stops: SIGTERM → exit within ``agent.shutdown_timeout`` under any load.

The end-to-end case runs a real ``edge-agent run`` polling 5,000 Modbus registers every 100 ms
from a pymodbus server in another process (enough to saturate the agent's core), uploading to
the contract receiver, with a busy process competing for the CPU. Before the fix one SIGTERM in
two left the agent polling until killed: Python 3.11's ``asyncio.wait_for`` (inside pymodbus)
swallows a cancellation that lands with the answer, so one ``cancel()`` did not stop the driver.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.agent.shutdown import Deadline, cancel_until_done
from tests.conftest import free_port
from tests.receiver import IngestReceiver

SHUTDOWN_S = 3.0
MARGIN_S = 2.5   # interpreter exit, web server and buffer close

SERVER = """
import asyncio, logging, sys
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
logging.disable(logging.CRITICAL)
async def main(port, n):
    dev = SimDevice(1, simdata=[SimData(0, values=list(range(n)), datatype=DataType.REGISTERS)])
    srv = ModbusTcpServer(dev, address=("127.0.0.1", port))
    print("READY", flush=True)
    await srv.serve_forever()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def agent_config(state: Path, port: int, url: str, registers: int) -> str:
    points = "".join(f'\n[[drivers.devices.points]]\nsensor_id = "r{a}"\naddress = {a}\n'
                     for a in range(registers))
    return f"""
[agent]
gateway_id = "stop-gw"
state_dir = "{state}"
shutdown_timeout = "{SHUTDOWN_S}s"

[uploader]
url = "{url}"
api_key = "stop-key"

[web]
enabled = false

[[drivers]]
kind = "modbus"
name = "plc"
host = "127.0.0.1"
port = {port}
poll_interval = "100ms"
timeout = "1s"

[[drivers.devices]]
name = "d"
unit_id = 1
{points}"""


def test_sigterm_exits_within_shutdown_timeout_under_saturating_load(tmp_path: Path) -> None:
    registers = 5000
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(registers)],
                              stdout=subprocess.PIPE, text=True)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "READY"
        with IngestReceiver("stop-key", keep_bodies=False) as rx:
            for run in range(2):   # the lost cancellation was a race: give it two chances
                cfg = tmp_path / f"agent{run}.toml"
                cfg.write_text(agent_config(tmp_path / "state", port, rx.url, registers))
                log = (tmp_path / f"agent{run}.log").open("w")
                exe = Path(sys.executable).with_name("edge-agent")
                agent = subprocess.Popen([str(exe), "run", "-c", str(cfg)], stdout=log,
                                         stderr=subprocess.STDOUT)
                try:
                    start = len(rx.readings)
                    want = start + 2 * registers

                    def delivered(r: IngestReceiver, want: int = want) -> bool:
                        return len(r.readings) >= want

                    assert rx.wait_for(delivered, 60), "the agent never delivered under load"
                    time.sleep(2.0)
                    t0 = time.monotonic()
                    agent.send_signal(signal.SIGTERM)
                    try:
                        rc = agent.wait(SHUTDOWN_S + 30)
                    except subprocess.TimeoutExpired:
                        rc = None
                    took = time.monotonic() - t0
                finally:
                    if agent.poll() is None:
                        agent.kill()
                        agent.wait()
                    log.close()
                tail = (tmp_path / f"agent{run}.log").read_text()[-2000:]
                assert rc == 0, f"run {run}: exit {rc} after {took:.1f} s\n{tail}"
                assert took <= SHUTDOWN_S + MARGIN_S, f"run {run}: stop took {took:.1f} s\n{tail}"
    finally:
        for p in (hog, server):
            p.kill()
            p.wait()


async def test_cancel_until_done_outlasts_a_swallowed_cancellation() -> None:
    """A task that swallows its first cancellation (as 3.11's wait_for can) is still stopped."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 2:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_until_done([task], 2.0)
    assert task.cancelled() and swallowed == 3


async def test_cancel_until_done_gives_up_at_its_bound() -> None:
    immortal = True

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if not immortal:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    t0 = time.monotonic()
    assert not await cancel_until_done([task], 0.3)
    assert 0.25 <= time.monotonic() - t0 < 1.0
    assert not task.done()
    immortal = False
    assert await cancel_until_done([task], 1.0)
    d = Deadline(1.0)
    assert 0.9 < d.left() <= 1.0 and Deadline(-1).left(0.5) == 0.5
