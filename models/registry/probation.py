"""The in-service watch of a newly deployed version (automatic rollback when it fails)."""

from __future__ import annotations

import numpy as np

from edge_agent.models.bundle import Manifest

__all__ = ["Probation"]


class Probation:
    """Watches a newly deployed version in service (:attr:`Analysis.score_watch`).

    Fails it on ``max_errors`` scoring errors (an exception, or a non-finite score for finite
    features), or when at least half of the first ``windows`` scores lie far outside the
    manifest's reference distribution: beyond ``factor`` reference spans past the range of the
    reference scores and the anomaly threshold."""

    def __init__(self, manifest: Manifest, windows: int, factor: float,
                 max_errors: int = 3) -> None:
        ref = [r.score for r in manifest.references] + [manifest.threshold]
        lo, hi = min(ref), max(ref)
        span = (hi - lo) or abs(hi) or 1.0
        self.low, self.high = lo - factor * span, hi + factor * span
        self.windows, self.max_errors = windows, max_errors
        self.seen = self.outliers = self.errors = 0
        self.last_error = ""
        self.failed: str | None = None
        self.passed = False

    def __call__(self, result: np.ndarray | Exception) -> None:
        if self.failed or self.passed:
            return
        if isinstance(result, Exception):
            self.errors += 1
            self.last_error = str(result)
        else:
            bad = ~np.isfinite(result)
            if bad.any():
                self.errors += int(bad.sum())
                self.last_error = "non-finite score for finite features"
            ok = result[~bad]
            self.seen += ok.size
            self.outliers += int(((ok < self.low) | (ok > self.high)).sum())
        if self.errors >= self.max_errors:
            self.failed = f"{self.errors} scoring errors in service (last: {self.last_error})"
        elif self.outliers * 2 >= self.windows:
            self.failed = (f"{self.outliers} of {self.seen} scores far outside the reference "
                           f"distribution [{self.low:.4g}, {self.high:.4g}]")
        elif self.seen >= self.windows:
            self.passed = True
