"""systemd's service notification protocol (``sd_notify``) over ``$NOTIFY_SOCKET``.

A few lines instead of a dependency: each message is one datagram of ``KEY=VALUE`` lines sent to
the Unix socket systemd names in ``$NOTIFY_SOCKET`` (``@`` at the start means the abstract
namespace). Without that variable (not started by systemd, or ``Type=exec``) every call is a
no-op. :class:`Watchdog` sends ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` — only while the
pipeline makes progress, so systemd restarts a stalled agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

__all__ = ["Notifier", "Watchdog"]


class Notifier:
    """Sends notifications to systemd; does nothing when not run under ``Type=notify``."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        self.sent = 0
        self.failed = 0
        if addr:
            self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram (``ready=1`` → ``READY=1``)."""
        if self.address is None:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            self.failed += 1
            log.warning("sd_notify failed", extra={"error": str(exc), "socket": self.address})
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(ready=1, status=status) if status else self.send(ready=1)

    def status(self, text: str) -> bool:
        return self.send(status=text.replace("\n", " ")[:200])

    def stopping(self) -> bool:
        return self.send(stopping=1)

    def reloading(self, monotonic_usec: int) -> bool:
        return self.send(reloading=1, monotonic_usec=monotonic_usec)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None when systemd runs no watchdog for us."""
    env = dict(os.environ) if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Watchdog:
    """Pings systemd's watchdog only while ``progress()`` says the pipeline is alive."""

    def __init__(self, notifier: Notifier, progress: Callable[[], tuple[bool, str]],
                 interval: float, status: Callable[[], str] | None = None) -> None:
        self.notifier = notifier
        self.progress = progress
        self.interval = interval
        self.status = status
        self.pings = 0
        self.withheld = 0
        self._stalled = False

    def tick(self) -> bool:
        """One check: ping if progressing; log once when a stall starts and when it ends."""
        ok, reason = self.progress()
        if ok:
            if self._stalled:
                log.info("pipeline progressing again; watchdog pings resumed")
            self._stalled = False
            self.pings += 1
            fields: dict[str, str | int] = {"watchdog": 1}
            if self.status is not None:
                fields["status"] = self.status()[:200]
            self.notifier.send(**fields)
            return True
        if not self._stalled:
            log.error("pipeline stalled; withholding watchdog pings", extra={"reason": reason})
        self._stalled = True
        self.withheld += 1
        return False

    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self.interval)
