"""The buffer's SQLite schema and its versioned migrations.

``PRAGMA user_version`` holds the schema version. :func:`migrate` applies every step above it in
one transaction each; a database newer than this code is refused (never rewritten).

Layout (v4; v1 differed in ``readings``, one row per reading, see :func:`_v2`; v2 had one
implicit consumer and a ``batch`` column in ``events``/``features``, see :func:`_v3`; v3
lacked ``dropped_kind``):

* ``meta(key, value)`` — ``epoch``: a random id minted when the file is created, part of every
  idempotency key so that a replaced (corrupt, deleted) database can never reuse a key.
* ``sources(id, sensor_id, sensor_type, unit)`` — source ids (v1: referenced by each reading
  row; v2: by each chunk's ``srcs`` and by the ``dropped`` counters).
* ``readings(id, n, ts, ts_max, size, srcs, idx, body)`` — *packed*: one row (a chunk) per
  commit group (≤ 4096 readings) holding ``n`` readings in order as pre-serialized contract JSON,
  zlib-compressed, with each reading's source (see :mod:`.pack`); ``ts``/``ts_max`` their time
  range (µs), ``size`` their wire bytes. ``id``
  is AUTOINCREMENT: chunks are never renumbered nor reused, and the sequence of all readings is
  the chunks in id order. A batch's readings are one contiguous slice of that sequence
  (``batches.lo_readings``/``lo_off`` .. ``hi_readings``/``hi_end``); each sink's cursor
  (v2: ``meta.rcursor``) is the position up to which readings are assigned to its batches.
* ``features(id, ts, body)`` / ``events(id, ts, body)`` — the contract's JSON object; ``id`` is
  AUTOINCREMENT (v3), so a sink's cursor (the last id it took) never meets a reused id.
* ``sinks(name, tables, ev, ft, rc, ro)`` (v3) — one row per named sink: the tables it consumes
  and its cursors (last event id, last feature id, reading position ``rc:ro``) up to which rows
  are assigned to its batches. ``meta.rhead`` is the reading position before which every
  registered consumer has delivered (the chunk holding it is kept until its end is delivered).
* ``batches(id, sink, key, state, lo_*/hi_*, ...)`` — one delivery transaction of one sink
  (``sink``, v3). For events and features the id range of the members (all rows in that range:
  ids are never reused and no member is deleted while the batch is pending); for readings the
  slice above (``lo_off``, ``hi_end``: offsets in the first and last chunk, v2). ``id`` is
  AUTOINCREMENT (never reused, even after the rows are pruned) and is the ``batch_seq`` on the
  wire; ``state`` is pending/delivered/split/quarantined.
* ``gate(src, us)`` (v3) — the last reading timestamp (µs) committed per source, loaded at start
  by the reading gate so a repeat of a ``(sensor_id, timestamp)`` stored before a restart is
  dropped before it is stored again.
* ``quarantine(id, batch_key, status, reason, body, ...)`` — batches the receiver refused (400/422).
* ``dropped(src, n)`` — readings dropped by the quota, per source (persistent counter).
* ``dropped_kind(kind, source, n)`` (v4) — other rows dropped or thinned by the quota
  (``kind`` ``features``: per feature source; see :mod:`.quota`), persistent counters.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable

from edge_agent.errors import SchemaTooNew as SchemaTooNew

LATEST = 4


def _v1(conn: sqlite3.Connection) -> None:
    stmts = [
        "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE sources(
               id INTEGER PRIMARY KEY, sensor_id TEXT NOT NULL, sensor_type TEXT NOT NULL,
               unit TEXT NOT NULL, UNIQUE(sensor_id, sensor_type, unit))""",
        """CREATE TABLE readings(
               id INTEGER PRIMARY KEY, src INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL,
               quality REAL NOT NULL, meta TEXT, batch INTEGER)""",
        """CREATE TABLE features(
               id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, body TEXT NOT NULL, batch INTEGER)""",
        """CREATE TABLE events(
               id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, body TEXT NOT NULL, batch INTEGER)""",
        """CREATE TABLE batches(
               id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
               state TEXT NOT NULL CHECK (state IN ('pending','delivered','split','quarantined')),
               created_us INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
               last_status TEXT, done_us INTEGER,
               n_readings INTEGER NOT NULL, n_features INTEGER NOT NULL,
               n_events INTEGER NOT NULL,
               lo_readings INTEGER, hi_readings INTEGER, lo_features INTEGER,
               hi_features INTEGER, lo_events INTEGER, hi_events INTEGER)""",
        "CREATE INDEX batches_state ON batches(state) WHERE state = 'pending'",
        """CREATE TABLE quarantine(
               id INTEGER PRIMARY KEY, batch_key TEXT NOT NULL, created_us INTEGER NOT NULL,
               status INTEGER, reason TEXT NOT NULL, body TEXT NOT NULL,
               n_rows INTEGER NOT NULL, requeued_us INTEGER)""",
        "CREATE TABLE dropped(src INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
    ]
    for s in stmts:
        conn.execute(s)
    conn.execute("INSERT INTO meta(key, value) VALUES ('epoch', ?)", (secrets.token_hex(6),))


V2_TABLE = """CREATE TABLE readings(
    id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, ts INTEGER NOT NULL,
    ts_max INTEGER NOT NULL, size INTEGER NOT NULL, srcs TEXT NOT NULL, idx BLOB NOT NULL,
    body BLOB NOT NULL)"""


def _v2(conn: sqlite3.Connection) -> None:
    """Packed readings. Existing rows are converted: the rows of each pending batch become
    that batch's slice (same key, same rows), then the unassigned rows, in id order."""
    from .migrate_v2 import convert_v1_readings

    conn.execute("ALTER TABLE readings RENAME TO readings_v1")
    conn.execute(V2_TABLE)
    conn.execute("ALTER TABLE batches ADD COLUMN lo_off INTEGER")
    conn.execute("ALTER TABLE batches ADD COLUMN hi_end INTEGER")
    convert_v1_readings(conn)
    conn.execute("DROP TABLE readings_v1")


def _v3(conn: sqlite3.Connection) -> None:
    """Delivery transactions per named sink (see :mod:`.migrate_v3`)."""
    from .migrate_v3 import per_sink_cursors

    per_sink_cursors(conn)


DROPPED_KIND = """CREATE TABLE dropped_kind(
    kind TEXT NOT NULL, source TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY(kind, source))
    WITHOUT ROWID"""


def _v4(conn: sqlite3.Connection) -> None:
    """Persistent drop counters of kinds other than readings (thinned or dropped features)."""
    conn.execute(DROPPED_KIND)


MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection], None]]] = [
    (1, _v1), (2, _v2), (3, _v3), (4, _v4)]


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring ``conn`` (autocommit mode) to :data:`LATEST`; returns the version found."""
    found = version(conn)
    if found > LATEST:
        raise SchemaTooNew(f"buffer schema v{found} is newer than this agent (v{LATEST}); "
                           "upgrade the agent or point [buffer].path elsewhere")
    for ver, step in MIGRATIONS:
        if ver <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            conn.execute(f"PRAGMA user_version = {ver}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def connect(path: str, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with the buffer's pragmas (WAL)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA busy_timeout = 10000")
    if version(conn) > LATEST:  # refuse before touching anything (WAL switch writes the header)
        conn.close()
        raise SchemaTooNew(f"{path}: buffer schema is newer than this agent (v{LATEST}); "
                           "upgrade the agent or point [buffer].path elsewhere")
    # Only takes effect on a new, empty file (and must precede WAL): lets the file shrink back
    # with incremental vacuum. A no-op on an existing database.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise sqlite3.OperationalError(f"cannot switch {path} to WAL (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    # 4 MB of page cache: the tables are append-only and sinks read near the tail, so a bigger
    # cache only grew the daemon's RSS (16 MB filled within minutes at light load).
    conn.execute("PRAGMA cache_size = -4000")
    return conn


def epoch(conn: sqlite3.Connection) -> str:
    return str(conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])
