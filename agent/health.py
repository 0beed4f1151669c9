"""Is the pipeline making progress? One notion shared by ``/healthz`` and the systemd watchdog.

:class:`Progress` is given observations (on the event loop, whenever someone asks) and says
whether the agent is healthy, with the reasons when it is not:

* the buffer writer commits: when records wait for it (in the pipeline's queues or the
  writer's own queue) and nothing was committed for ``stall_after`` seconds, the writer (or the
  disk) is stuck; a dead writer thread fails at once;
* every enabled driver delivered within its expected interval (3 intervals, at least
  ``stall_after``) — or is known to be disconnected (then the supervisor is reconnecting with
  backoff, which is progress of a kind; the page shows it as disconnected). A driver with no
  known interval (an OPC-UA subscription only reports changes) is judged by its connection only.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DriverView:
    name: str
    connected: bool
    last_read: float | None
    values: int
    expected_interval: float | None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...] = ()
    checked_at: float = 0.0

    def as_json(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "stalled", "reasons": list(self.reasons),
                "checked_at": self.checked_at}


@dataclass
class Progress:
    stall_after: float = 10.0
    started: float | None = None
    _commits: int = -1
    _commit_at: float = 0.0
    _last: Verdict = field(default_factory=lambda: Verdict(True))

    def observe(self, now: float, *, commits: int, writer_alive: bool, waiting: int,
                drivers: list[DriverView]) -> Verdict:
        """``waiting``: records queued for the buffer now (pipeline queues + writer queue)."""
        if self.started is None:
            self.started = now
        if commits != self._commits:
            self._commits, self._commit_at = commits, now
        reasons: list[str] = []
        if not writer_alive:
            reasons.append("buffer writer is not running")
        elif waiting > 0 and now - self._commit_at > self.stall_after:
            reasons.append(f"buffer: no commit for {now - self._commit_at:.1f} s with "
                           f"{waiting} records waiting")
        for d in drivers:
            why = self._driver(now, d)
            if why:
                reasons.append(why)
        self._last = Verdict(not reasons, tuple(reasons), now)
        return self._last

    def _driver(self, now: float, d: DriverView) -> str | None:
        if not d.connected or d.expected_interval is None:
            return None
        limit = max(3.0 * d.expected_interval, self.stall_after)
        since = d.last_read if d.last_read is not None else self.started
        if since is None:
            return None
        silent = now - since
        if silent > limit:
            return (f"driver {d.name}: connected but nothing delivered for {silent:.1f} s "
                    f"(limit {limit:.1f} s)")
        return None

    @property
    def last(self) -> Verdict:
        return self._last


def expected_interval(driver: object) -> float | None:
    """How often a driver should deliver: its poll interval (polled drivers) or its block
    length (streaming sources such as the simulator, replay, sound card); None if unknown.
    A driver may say it itself with an ``expected_interval`` attribute."""
    own = getattr(driver, "expected_interval", None)
    if isinstance(own, int | float):
        return float(own)
    cfg = getattr(driver, "cfg", None)
    key = "block" if getattr(driver, "streaming", False) else "poll_interval"
    val = getattr(cfg, key, None)
    return float(val) if isinstance(val, int | float) and val > 0 else None
