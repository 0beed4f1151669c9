"""Count what a driver could leak: asyncio tasks and open sockets (from /proc/self/fd)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass


def socket_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(f"{fd}->{target}")
    return out


_PEER_CODE = ("asyncua/server/", "pymodbus/server/", "tests/drivers/")


def _peer_task(task: asyncio.Task[object]) -> bool:
    """Tasks of the test's own servers (asyncua's server leaks session timers across stop())."""
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and any(p in code.co_filename for p in _PEER_CODE)


@dataclass
class ResourceCount:
    tasks: set[str]
    sockets: set[str]

    @classmethod
    def now(cls) -> ResourceCount:
        return cls({repr(t.get_coro()) for t in asyncio.all_tasks()
                    if not t.done() and not _peer_task(t)}, socket_fds())

    def assert_same_as(self, base: ResourceCount) -> None:
        extra_tasks = self.tasks - base.tasks
        assert len(self.tasks) <= len(base.tasks), f"leaked tasks: {sorted(extra_tasks)}"
        assert len(self.sockets) <= len(base.sockets), (
            f"leaked sockets: {len(self.sockets)} now vs {len(base.sockets)} before")
