"""``edge-agent status``: the status page's summary in a terminal, read from ``/api/status``.

The agent is found at ``--url``, else at the URL the running agent wrote to
``<state_dir>/web-url``, else at ``[web].listen`` of the config. The token comes from
``[web].auth_token`` of that config (or ``$EDGE_WEB_TOKEN``); with basic auth, the password
from ``$EDGE_WEB_PASSWORD`` (the config holds only its hash). Exit 0 when the agent answered
and is healthy, 1 when it answered but is stalled, 2 when it cannot be reached.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge_agent.timestamps import local_text

EX_UNREACHABLE = 2


def _url_and_auth(args: argparse.Namespace) -> tuple[str, str | None]:
    """The agent's URL and the ``Authorization`` header value to send (or None)."""
    from edge_agent.agent import config

    cfg = config.load(Path(args.config) if args.config else None)
    token = os.environ.get("EDGE_WEB_TOKEN")
    auth = f"Bearer {token}" if token else None
    if cfg.web.basic_user is not None:
        pw = os.environ.get("EDGE_WEB_PASSWORD", "")
        auth = "Basic " + base64.b64encode(f"{cfg.web.basic_user}:{pw}".encode()).decode()
    elif cfg.web.auth_token is not None:
        try:
            auth = f"Bearer {cfg.web.auth_token.reveal()}"
        except (LookupError, OSError):
            pass  # fall back to $EDGE_WEB_TOKEN
    if args.url:
        return args.url.rstrip("/"), auth
    written = cfg.state_dir / "web-url"
    if written.is_file():
        return written.read_text(encoding="utf-8").strip(), auth
    return f"http://{cfg.web.listen}", auth


def fetch(url: str, auth: str | None, timeout: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/api/status")
    if auth:
        req.add_header("Authorization", auth)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def _n(v: Any, unit: str = "", digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}{unit}"
    return f"{v}{unit}"


def render(s: dict[str, Any]) -> list[str]:
    g, b, y, h = s["gateway"], s["buffer"], s["sync"], s["health"]
    disk = g.get("disk", {})
    lines = [
        f"{g['id']}  edge-agent {g['version']} on {g['hostname']}  up {_n(g['uptime_s'], ' s')}"
        f"  {local_text(g['clock'])}",
        f"health: {h['status']}" + (f" ({'; '.join(h['reasons'])})" if h["reasons"] else ""),
        f"disk: {_n(disk.get('free_bytes'))} bytes free of {_n(disk.get('total_bytes'))}",
        f"buffer: {_n(b.get('rows_queued_total'))} rows unsent, oldest "
        f"{_n(b.get('oldest_unsent_age_s'), ' s')}, file {_n(b.get('file_bytes'))} bytes",
        f"sync: {y['state']}, lag {_n(y.get('lag_s'), ' s')}"
        + (f", last error: {y['last_error']}" if y.get("last_error") else ""),
        f"mqtt: {s['mqtt'].get('state')}",
    ]
    for src in s["sources"]:
        alarm = "ALARM" if src["alarm"] else "normal"
        conn = {True: "connected", False: "disconnected"}.get(src["connected"], "unknown")
        lines.append(f"{src['id']}: {alarm}  score {_n(src['score'])} / threshold "
                     f"{_n(src['threshold'])}  model {src['model']}  {conn}")
        a = src.get("active_alert")
        if a:
            diag = a["details"].get("diagnosis")
            since = local_text(a["timestamp"], with_date=False)
            lines.append(f"    alarm since {since}" + (f": {diag}" if diag else ""))
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    from edge_agent.errors import ConfigError

    try:
        url, auth = _url_and_auth(args)
    except ConfigError as exc:
        print(f"edge-agent status: {exc}", file=sys.stderr)
        return 78
    try:
        snap = fetch(url, auth)
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, bad JSON
        print(f"edge-agent status: cannot read {url}/api/status: {exc}", file=sys.stderr)
        return EX_UNREACHABLE
    if args.json:
        print(json.dumps(snap, indent=1))
    else:
        print("\n".join(render(snap)))
    return 0 if snap["health"]["status"] == "ok" else 1


def cmd_hash_password(args: argparse.Namespace) -> int:
    from edge_agent.agent.webconfig import hash_password

    if sys.stdin.isatty():
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            print("edge-agent hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        pw = sys.stdin.readline().rstrip("\n")
    if len(pw) < 12:
        print("edge-agent hash-password: use at least 12 characters", file=sys.stderr)
        return 1
    print(hash_password(pw))
    return 0


def add_command(sub: Any) -> None:
    st = sub.add_parser("status", help="print the running agent's status (from its web API)")
    st.add_argument("-c", "--config", help="TOML config of the running agent")
    st.add_argument("--url", help="the agent's web address (default: from the config)")
    st.add_argument("--json", action="store_true", help="print /api/status as JSON")
    st.set_defaults(func=cmd_status)
    hp = sub.add_parser("hash-password", help="hash a password for [web].basic_password_hash "
                                              "(reads it from the terminal or stdin)")
    hp.set_defaults(func=cmd_hash_password)
