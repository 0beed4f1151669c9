"""``[web]``: the status page, its JSON API, ``/healthz`` and ``/metrics`` on one HTTP server.

A loopback address needs no authentication; any other address (``0.0.0.0``, a LAN address, a
host name) requires ``auth_token`` (or ``auth_token_file``): the check is a configuration error
(exit 78), so a gateway never serves its plant data to the network unauthenticated by mistake.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from edge_agent.settings import Duration, Model, SecretField

MIN_TOKEN_CHARS = 16


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` → (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


class WebConfig(Model):
    """``[web]``."""

    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    # Bearer token for the API, /metrics and the page's login form; "${ENV}" or auth_token_file.
    auth_token: SecretField | None = None
    # /healthz fails when a stage makes no progress for this long (or for 3 of a driver's
    # expected intervals, whichever is longer).
    stall_after: Duration = 10.0
    # Anomaly-score history kept in memory per source, and one plotted point (the maximum)
    # per `resolution`.
    history: Duration = 3600.0
    resolution: Duration = 5.0

    def problems(self) -> Iterable[tuple[str, str]]:
        try:
            host, port = split_listen(self.listen)
        except ValueError as exc:
            return [("listen", str(exc))]
        out: list[tuple[str, str]] = []
        if port > 65535:
            out.append(("listen", f"port {port} is not in 0..65535"))
        if self.enabled and not is_loopback(host) and self.auth_token is None:
            out.append(("listen", f"{host} is not a loopback address: set auth_token (or "
                                  "auth_token_file) so the page and API need a token"))
        tok = self.auth_token
        if tok is not None and tok.literal is not None and len(tok.literal) < MIN_TOKEN_CHARS:
            out.append(("auth_token", f"must be at least {MIN_TOKEN_CHARS} characters"))
        if self.resolution <= 0 or self.history < self.resolution:
            out.append(("resolution", "must be > 0 and not longer than history"))
        if self.stall_after <= 0:
            out.append(("stall_after", "must be > 0"))
        return out
