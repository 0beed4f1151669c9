"""``[web]``: the status page, its JSON API, ``/healthz`` and ``/metrics`` on one HTTP server.

A loopback address needs no authentication; any other address (``0.0.0.0``, a LAN address, a
host name) requires ``auth_token`` (or ``auth_token_file``) or HTTP basic auth with a hashed
password (``basic_user`` + ``basic_password_hash`` from ``edge-agent hash-password``): the
check is a configuration error (exit 78), so a gateway never serves its plant data to the
network unauthenticated by mistake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
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


# scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>; n = 2^14, r = 8: ~20-50 ms per check on an
# industrial PC (the server remembers an accepted header, so polling does not pay it again).
_HASH = re.compile(r"scrypt\$(1[0-9]|20)\$([1-9][0-9]?)\$([1-9])\$([A-Za-z0-9+/=]{16,})\$"
                   r"([A-Za-z0-9+/=]{40,})")


def hash_password(password: str, *, log_n: int = 14, r: int = 8, p: int = 1) -> str:
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=1 << log_n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${log_n}${r}${p}${b64(salt).decode()}${b64(dk).decode()}"


def check_password(password: str, stored: str) -> bool:
    m = _HASH.fullmatch(stored)
    if m is None:
        return False
    log_n, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
    salt, want = base64.b64decode(m.group(4)), base64.b64decode(m.group(5))
    got = hashlib.scrypt(password.encode(), salt=salt, n=1 << log_n, r=r, p=p,
                         dklen=len(want), maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(got, want)


class WebConfig(Model):
    """``[web]``."""

    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    # Bearer token for the API, /metrics and the page's login form; "${ENV}" or auth_token_file.
    auth_token: SecretField | None = None
    # Or HTTP basic auth: a user and a scrypt hash (`edge-agent hash-password`), not a password.
    basic_user: str | None = None
    basic_password_hash: str | None = None
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
        if self.enabled and not is_loopback(host) and self.auth_token is None \
                and self.basic_user is None:
            out.append(("listen", f"{host} is not a loopback address: set auth_token (or "
                                  "auth_token_file, or basic_user and basic_password_hash) so "
                                  "the page and API need credentials"))
        if (self.basic_user is None) != (self.basic_password_hash is None):
            out.append(("basic_user", "basic_user and basic_password_hash go together"))
        if self.basic_user is not None and (not self.basic_user or ":" in self.basic_user):
            out.append(("basic_user", "must be non-empty, without ':'"))
        h = self.basic_password_hash
        if h is not None and _HASH.fullmatch(h) is None:
            out.append(("basic_password_hash", "not a hash from `edge-agent hash-password` "
                                               "(scrypt$14$8$1$<salt>$<hash>)"))
        if self.auth_token is not None and self.basic_user is not None:
            out.append(("basic_user", "give either auth_token or basic auth, not both"))
        tok = self.auth_token
        if tok is not None and tok.literal is not None and len(tok.literal) < MIN_TOKEN_CHARS:
            out.append(("auth_token", f"must be at least {MIN_TOKEN_CHARS} characters"))
        if self.resolution <= 0 or self.history < self.resolution:
            out.append(("resolution", "must be > 0 and not longer than history"))
        if self.stall_after <= 0:
            out.append(("stall_after", "must be > 0"))
        return out
