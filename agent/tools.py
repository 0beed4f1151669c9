"""Operator subcommands of ``edge-agent`` beyond run/check-config.

* ``edge-agent models export|train|verify ...`` — model bundles (see models/cli.py);
* ``edge-agent quarantine list|show|requeue`` — batches the ingest API refused;
* ``edge-agent opcua gen-cert`` — a self-signed client certificate and key for OPC-UA security.

Each command imports its module only when it runs, so ``edge-agent run`` never loads sklearn.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any


def _db_from(args: argparse.Namespace) -> str:
    if args.db:
        return str(args.db)
    from edge_agent.agent import config
    from edge_agent.agent.daemon import buffer_path
    from edge_agent.errors import ConfigError

    try:
        cfg = config.load(Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(config.EX_CONFIG) from exc
    return str(buffer_path(cfg))


def cmd_quarantine(args: argparse.Namespace) -> int:
    from edge_agent.sync import quarantine

    argv = ["--db", _db_from(args), args.action]
    if args.action in ("show", "requeue"):
        if args.id is None:
            print(f"quarantine {args.action} needs a batch id", file=sys.stderr)
            return 2
        argv.append(str(args.id))
    elif args.all:
        argv.append("--all")
    return quarantine.main(argv)


def cmd_gen_cert(args: argparse.Namespace) -> int:
    from edge_agent.drivers.opcua_certs import generate_client_certificate

    cert, key = Path(args.cert), Path(args.key)
    for p in (cert, key):
        if p.exists() and not args.force:
            print(f"{p} exists (use --force to overwrite)", file=sys.stderr)
            return 1
    generate_client_certificate(cert, key, args.application_uri, args.hostname, days=args.days)
    print(f"wrote {cert} and {key}; trust {cert} on the OPC-UA server")
    return 0


def add_commands(sub: Any) -> None:
    from edge_agent.models import cli as models_cli

    models_cli.add_commands(sub)

    q = sub.add_parser("quarantine", help="batches the ingest API refused (400/422)")
    q.add_argument("action", choices=["list", "show", "requeue"])
    q.add_argument("id", nargs="?", type=int, help="quarantined batch id (show/requeue)")
    q.add_argument("--all", action="store_true", help="list re-queued ones too")
    src = q.add_mutually_exclusive_group()
    src.add_argument("--db", help="buffer database path")
    src.add_argument("-c", "--config", help="agent config (to find the buffer)")
    q.set_defaults(func=cmd_quarantine)

    o = sub.add_parser("opcua", help="OPC-UA helpers")
    osub = o.add_subparsers(dest="opcua_command", required=True)
    g = osub.add_parser("gen-cert", help="create a self-signed client certificate and key")
    g.add_argument("--cert", default="client-cert.der", help="certificate path (.der or .pem)")
    g.add_argument("--key", default="client-key.pem", help="private key path (PEM)")
    g.add_argument("--application-uri", default="urn:edge-gateway-agent:client",
                   help="must equal the driver's application_uri")
    g.add_argument("--hostname", default=socket.gethostname())
    g.add_argument("--days", type=int, default=730)
    g.add_argument("--force", action="store_true")
    g.set_defaults(func=cmd_gen_cert)
