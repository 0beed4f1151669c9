"""The one backoff policy every retry loop uses (drivers, sinks, buffer, registry).

:class:`Backoff` is the policy (frozen, from config): exponential growth from ``initial`` by
``multiplier`` up to ``maximum``, with a random fraction ``jitter`` taken off each delay so that
many gateways do not retry in lockstep. :class:`Retrier` is one loop's state: how many attempts
failed in a row. Reset it only when the thing retried has really worked (a driver's first good
read, a delivered batch), never on a half success such as a TCP connect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "Retrier"]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter.

    ``delay(n) = min(maximum, initial·multiplier^n)·(1 - jitter·U)``, U uniform in [0, 1)."""

    initial: float = 0.5
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of the delay drawn at random (0 = none, 1 = full jitter)

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum):
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.multiplier < 1 or not (0 <= self.jitter <= 1):
            raise ValueError("backoff needs multiplier >= 1 and 0 <= jitter <= 1")

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter for failed attempt number ``attempt`` (0-based)."""
        return min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before the next try after ``attempt + 1`` consecutive failures."""
        r = (rng or random).random()
        return self.ceiling(attempt) * (1.0 - self.jitter * r)

    def retrier(self, rng: random.Random | None = None) -> Retrier:
        return Retrier(self, rng)


@dataclass
class Retrier:
    """One retry loop's state under a :class:`Backoff` policy."""

    policy: Backoff
    rng: random.Random | None = None
    failures: int = field(default=0)

    def next_delay(self, at_least: float = 0.0) -> float:
        """Count one more failure and return how long to wait before trying again.

        ``at_least`` is a floor asked for by the peer (``Retry-After``); the backoff still
        applies, so ``Retry-After: 0`` never means "hammer it"."""
        d = self.policy.delay(self.failures, self.rng)
        self.failures += 1
        return max(d, at_least)

    def reset(self) -> None:
        """The thing retried worked: the next failure starts from ``initial`` again."""
        self.failures = 0
