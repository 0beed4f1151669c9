"""Structured JSON logs on stdout, one object per line (journald keeps them as MESSAGE).

Every ``extra={...}`` field passed to a logger call becomes a key of the JSON object, so the
uploader's ``correlation_id`` (the batch's idempotency key) can be followed across retries and
restarts with ``journalctl -u edge-agent | jq 'select(.correlation_id == "...")'``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from edge_agent.timestamps import format_ms

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                       "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": format_ms(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def setup(level: str = "info", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries: the drivers and the uploader log (once, with context) and count every
    # failure in their health/stats, so the libraries' own per-attempt lines are noise.
    for noisy, floor in (("asyncua", logging.ERROR), ("pymodbus", logging.CRITICAL),
                         ("httpx", logging.WARNING), ("httpcore", logging.WARNING)):
        logging.getLogger(noisy).setLevel(max(floor, root.level))
