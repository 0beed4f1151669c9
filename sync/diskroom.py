"""The room the buffer really has on its file system, and the ballast that keeps it movable.

``max_size`` is what the operator allows; the file system may allow less (a small partition,
other files growing on it). :class:`DiskRoom` turns ``statvfs`` of the state directory into a
limit for the database's pages in use: the database file, its WAL and the free space, minus a
margin for the WAL to grow between checkpoints, and minus the ballast's size while the ballast
is released (so the buffer shrinks, oldest data first and counted, until the ballast can be
created again: when another process fills the disk, the buffer gives room back). The buffer's
quota is the smaller of the two (:meth:`DiskRoom.limit`).

The **ballast** is a plain file next to the database (``<db>.ballast``, a few MiB, real blocks).
When SQLite still reports ``SQLITE_FULL`` (the estimate was wrong, another process filled the
disk), the buffer deletes the ballast: that gives back enough room to delete delivered rows,
drop or thin old ones and checkpoint the WAL, so delivery goes on and the disk never wedges the
agent. The ballast is created again once there is room for it plus the margin.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .storebase import StoreBase

log = logging.getLogger(__name__)
__all__ = ["DiskRoom", "FsInfo"]

MiB = 1024**2
_WAL_MARGIN_MIN, _WAL_MARGIN_MAX = 256 * 1024, 64 * MiB
_BALLAST_MIN = 128 * 1024


@dataclass(frozen=True)
class FsInfo:
    total: int  # bytes of the file system
    avail: int  # bytes an unprivileged writer may still use (f_bavail)


def fs_info(directory: Path) -> FsInfo:
    st = os.statvfs(directory)
    return FsInfo(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class DiskRoom:
    """Free-space-aware quota and the ballast file of one buffer database."""

    def __init__(self, db: Path, ballast_size: int) -> None:
        self.db = db
        self.wal = Path(f"{db}-wal")
        self.ballast = Path(f"{db}.ballast")
        fs = fs_info(db.parent)
        # On a small file system both scale down (a 6 MiB partition: 768 KiB WAL margin,
        # 384 KiB ballast); on a normal one the WAL gets 64 MiB and the ballast its full size.
        self.margin = max(_WAL_MARGIN_MIN, min(_WAL_MARGIN_MAX, fs.total // 8))
        self.ballast_size = max(0, min(ballast_size, max(_BALLAST_MIN, fs.total // 16)))
        self.released = 0  # times the ballast was given up
        self.last_limit = 0

    # -- WAL ------------------------------------------------------------------------------
    def tune(self, conn: sqlite3.Connection) -> None:
        """Keep the WAL within the margin: checkpoint at half of it, truncate back to it."""
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        # Debian's SQLite is built with SECURE_DELETE: every freed page is zeroed, so deleting
        # N bytes of rows writes N bytes of WAL, exactly what a full disk cannot give. FAST
        # zeroes only pages that are written anyway.
        conn.execute("PRAGMA secure_delete = FAST")
        conn.execute(f"PRAGMA wal_autocheckpoint = {max(16, self.margin // 2 // page)}")
        conn.execute(f"PRAGMA journal_size_limit = {self.margin}")

    # -- quota ----------------------------------------------------------------------------
    def limit(self) -> int:
        """Bytes the database's pages in use may take on this file system."""
        try:
            fs = fs_info(self.db.parent)
        except OSError as exc:
            log.warning("cannot read the free space of the buffer's file system",
                        extra={"error": str(exc)})
            return self.last_limit or 1 << 62
        # The margin and a released ballast are kept free even at the cost of buffered data:
        # without room to move (delete, vacuum, checkpoint) the next SQLITE_FULL would wedge.
        reserve = self.margin + (0 if self.ballast.exists() else self.ballast_size)
        self.last_limit = max(0, _size(self.db) + _size(self.wal) + fs.avail - reserve)
        return self.last_limit

    def checkpoint(self, conn: sqlite3.Connection, force: bool = False) -> None:
        """Checkpoint the WAL into the database file when it outgrew the margin (an automatic
        checkpoint that could not grow the file fails silently, and the WAL then grows until
        the disk is full). Raises SQLITE_FULL if the file cannot grow: release the ballast."""
        if force or _size(self.wal) > self.margin:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def shrink(self, store: StoreBase) -> None:
        """Give the database's free pages back to the file system in steps that fit in the WAL
        margin (one big incremental vacuum could need more WAL than the disk has)."""
        step = max(16, self.margin // 4 // store.page_size)
        self.checkpoint(store.conn, force=True)
        for _ in range(100_000):
            if not store.vacuum(max_pages=step):
                break

    # -- ballast --------------------------------------------------------------------------
    def ensure_ballast(self) -> bool:
        """Create the ballast if it is missing and there is room for it and the margin."""
        if self.ballast_size <= 0 or self.ballast.exists():
            return False
        try:
            if fs_info(self.db.parent).avail < self.ballast_size + self.margin:
                return False
            tmp = self.ballast.with_name(self.ballast.name + ".tmp")
            _allocate(tmp, self.ballast_size)
            os.replace(tmp, self.ballast)
        except OSError as exc:
            log.info("ballast not created yet", extra={"error": str(exc)})
            return False
        log.info("buffer ballast in place", extra={"path": str(self.ballast),
                                                   "bytes": self.ballast_size})
        return True

    def release_ballast(self) -> int:
        """Delete the ballast (on SQLITE_FULL); returns the bytes given back."""
        try:
            size = self.ballast.stat().st_size
            self.ballast.unlink()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.error("cannot release the buffer ballast", extra={"error": str(exc)})
            return 0
        self.released += 1
        log.warning("buffer ballast released to keep the disk movable",
                    extra={"path": str(self.ballast), "bytes": size})
        return size

    def stats(self) -> dict[str, object]:
        try:
            avail = fs_info(self.db.parent).avail
        except OSError:
            avail = -1
        return {"disk_limit": self.last_limit, "disk_avail": avail,
                "ballast": self.ballast_size if self.ballast.exists() else 0,
                "ballast_released": self.released}


def _allocate(path: Path, size: int) -> None:
    """A file of ``size`` bytes with real blocks (not sparse); removed again on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            block = b"\0" * MiB
            left = size
            while left > 0:
                left -= os.write(fd, block[:left])
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
