"""Reading buffered records back out of the buffer database, for tools (``edge-agent models train
--source``), never for sinks (those get delivery batches from :class:`~.buffer.Buffer`).

The database is opened read-only (``mode=ro``), so a running agent's buffer can be read while it
writes; the schema stays this package's business.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from edge_agent.errors import StorageError
from edge_agent.records import to_us

__all__ = ["feature_rows"]


def feature_rows(db: Path | str, source: str, since: float, until: float
                 ) -> list[dict[str, float | None]]:
    """The ``values`` of every buffered feature vector of ``source`` with ``since <= window end
    <= until`` (POSIX seconds), oldest first. Vectors already delivered and pruned are gone.

    Raises :class:`~edge_agent.errors.StorageError` when the database cannot be read.
    """
    uri = f"file:{Path(db)}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            rows = conn.execute(
                "SELECT body FROM features WHERE ts BETWEEN ? AND ? "
                "AND json_extract(body, '$.source_id') = ? ORDER BY ts",
                (to_us(since), to_us(until), source)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read features from {db}: {exc}") from exc
    out: list[dict[str, float | None]] = []
    for (body,) in rows:
        values = json.loads(body).get("values", {})
        out.append(values if isinstance(values, dict) else {})
    return out
