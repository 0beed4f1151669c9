"""The buffer's space: quotas (size, age) and what a full disk does (a mixin of :class:`.Buffer`).

Runs on the buffer's writer thread only. See ``sync/NOTES.md`` (Quotas) for the policy.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from edge_agent.records import Severity, now

from .store import Store

if TYPE_CHECKING:
    from .buffer import BufferConfig

log = logging.getLogger(__name__)
SQLITE_FULL = 13


class SpaceMixin:
    """Quota drops, housekeeping and the reaction to SQLITE_FULL."""

    cfg: BufferConfig
    disk_errors: int
    dropped_total: int
    _dropped_snap: dict[str, int]
    _used: int
    _next_house: float
    _disk_episode: bool

    def _emit(self, kind: str, severity: Severity, details: dict[str, Any]) -> None:
        raise NotImplementedError

    def _own_flush(self, store: Store) -> None:
        raise NotImplementedError

    def _disk_error(self, store: Store, exc: sqlite3.Error) -> None:
        self.disk_errors += 1
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        log.warning("buffer write failed; retrying", extra={"error": str(exc)})
        if not self._disk_episode:
            self._disk_episode = True
            self._emit("buffer_disk_error", "critical",
                       {"error": str(exc), "code": getattr(exc, "sqlite_errorname", "")})
        if code == SQLITE_FULL:
            # Free pages inside the file for new rows: drop the oldest raw readings (counted).
            try:
                self._drop_bulk(store, max(1000, store.rows["readings"] // 10), "disk_full")
            except sqlite3.Error as again:
                log.warning("could not free space in the buffer", extra={"error": str(again)})

    def _drop_bulk(self, store: Store, n: int, reason: str,
                   older_than_us: int | None = None) -> int:
        before = store.dropped_by_sensor()
        got = store.drop_oldest("readings", n, older_than_us)
        feats = 0
        if got < n:
            feats = store.drop_oldest("features", n - got, older_than_us)
        if got or feats:
            after = store.dropped_by_sensor()
            per = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
            self.dropped_total += got + feats
            self._dropped_snap = after
            self._emit("buffer_quota_drop", "warning",
                       {"reason": reason, "readings": got, "features": feats, "by_sensor": per})
        return got + feats

    def _housekeep(self, store: Store, force: bool = False) -> None:
        try:
            self._space(store, force)
        except sqlite3.Error as exc:
            self.disk_errors += 1
            log.warning("buffer housekeeping failed", extra={"error": str(exc)})

    def _space(self, store: Store, force: bool) -> None:
        cfg = self.cfg
        self._used = used = store.used_bytes()
        ev = store.events_bytes
        bulk_limit = cfg.max_size - max(cfg.reserved_for_events, ev)
        if used - ev > bulk_limit and store.rows["readings"] + store.rows["features"]:
            per_row = (used - ev) / (store.rows["readings"] + store.rows["features"])
            n = int((used - ev - 0.9 * bulk_limit) / max(per_row, 1.0)) + 1
            self._drop_bulk(store, n, "max_size")
            store.vacuum(max_pages=1 << 30)
            self._used = store.used_bytes()
        t = time.monotonic()
        if force or t >= self._next_house:
            self._next_house = t + cfg.housekeeping_interval
            cutoff = int((now() - cfg.max_age) * 1e6)
            for _ in range(100):
                if self._drop_bulk(store, 50_000, "max_age", older_than_us=cutoff) < 50_000:
                    break
            total, free = store.pages()
            if free * store.page_size > max(1024**2, total * store.page_size // 4):
                store.vacuum(max_pages=(256 * 1024**2) // store.page_size)
            self._used = store.used_bytes()
        self._own_flush(store)

