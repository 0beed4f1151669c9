"""The database file itself: open and check it at start, or move a corrupt one aside.

A file that is not a database (SQLITE_NOTADB), is damaged (SQLITE_CORRUPT) or fails
``PRAGMA quick_check`` after an unclean shutdown is :class:`Corrupt`; the buffer then moves it
(with its ``-wal`` and ``-shm``) aside as ``<path>.corrupt-<UTC timestamp>`` — never deleting
it — and starts a new one. A file that cannot be opened or written (permissions, read-only,
I/O error) is not corrupt: that is :class:`BufferUnavailable` (an ``OSError``), the agent's
start fails and nothing is moved.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from edge_agent.errors import BufferUnavailable as BufferUnavailable
from edge_agent.errors import StorageError

from . import schema
from .store import Store

SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
_UNAVAILABLE = {3, 8, 10, 14, 23}  # PERM, READONLY, IOERR, CANTOPEN, AUTH: not corrupt


class Corrupt(StorageError):
    """The database file's content is damaged (moved aside)."""


def open_store(path: Path, synchronous: str, integrity_check: str) -> Store:
    """Open (creating or migrating) the buffer database; raise :class:`Corrupt` if unusable."""
    sync = synchronous.upper()
    existed = path.exists()
    conn: sqlite3.Connection | None = None
    try:
        conn = schema.connect(str(path), sync)
        schema.migrate(conn)
        row = conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
        if integrity_check == "always" or (integrity_check == "after_crash" and existed and
                                           (row is None or row[0] != "1")):
            res = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            if res != ["ok"]:
                raise Corrupt("quick_check: " + "; ".join(res))
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', '0')")
        return Store(conn, sync)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        name = getattr(exc, "sqlite_errorname", "")
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            raise Corrupt(f"{name}: {exc}") from exc
        if code in _UNAVAILABLE:
            raise BufferUnavailable(
                f"buffer database {path} cannot be {'opened' if existed else 'created'} for "
                f"writing ({name}: {exc}); check the owner and permissions of the file, its "
                "-wal/-shm and its directory (e.g. after running the agent once as root); "
                "nothing was moved") from exc
        raise
    except Corrupt:
        if conn is not None:
            conn.close()
        raise


def move_aside(path: Path) -> str:
    """Rename the database (and its WAL/SHM) to a timestamped name; return that name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = f"{path}.corrupt-{stamp}"
    target, i = base, 1
    while os.path.exists(target):
        target, i = f"{base}.{i}", i + 1
    for suffix in ("-wal", "-shm", ""):  # main file last: its presence marks the set
        src = f"{path}{suffix}"
        if os.path.exists(src):
            os.replace(src, f"{target}{suffix}")
    return target
