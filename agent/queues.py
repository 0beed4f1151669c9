"""Bounded queues between stages with a configured, counted overflow policy.

Memory never grows without bound: when a queue is full the policy decides —

* ``block``: the producer waits (back-pressure up to the driver; nothing is lost, but a slow
  consumer slows acquisition);
* ``drop_oldest``: the oldest queued item is discarded to make room (fresh data wins — right for
  waveforms feeding live analysis);
* ``drop_newest``: the new item is discarded.

Every discarded item is counted in :attr:`BoundedQueue.dropped`.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, Literal, TypeVar

from pydantic import Field

from edge_agent.settings import Model

T = TypeVar("T")

Overflow = Literal["block", "drop_oldest", "drop_newest"]


class QueueConfig(Model):
    size: int = Field(10_000, gt=0)
    overflow: Overflow = "block"


class BoundedQueue(Generic[T]):
    def __init__(self, name: str, size: int, overflow: Overflow) -> None:
        self.name = name
        self.size = size
        self.overflow = overflow
        self.dropped = 0
        self.put_total = 0
        self._items: collections.deque[T] = collections.deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more puts; getters drain what is left and then get an empty batch."""
        self._closed = True
        self._not_empty.set()
        self._not_full.set()

    async def put(self, item: T) -> None:
        if self._closed:
            raise RuntimeError(f"queue {self.name} is closed")
        while len(self._items) >= self.size:
            if self.overflow == "drop_newest":
                self.dropped += 1
                return
            if self.overflow == "drop_oldest":
                self._items.popleft()
                self.dropped += 1
                break
            self._not_full.clear()
            await self._not_full.wait()
            if self._closed:
                raise RuntimeError(f"queue {self.name} is closed")
        self._items.append(item)
        self.put_total += 1
        self._not_empty.set()

    async def put_many(self, items: list[T]) -> None:
        """``put`` of each item in order, with the same overflow policy, done in slices (one
        driver read is one call, not one coroutine per reading)."""
        i, n = 0, len(items)
        while i < n:
            if self._closed:
                raise RuntimeError(f"queue {self.name} is closed")
            room = self.size - len(self._items)
            if room <= 0 and self.overflow == "drop_newest":
                self.dropped += n - i
                return
            if room <= 0 and self.overflow == "block":
                self._not_full.clear()
                await self._not_full.wait()
                continue
            take = items[i:] if self.overflow == "drop_oldest" else items[i:i + room]
            self._items.extend(take)
            i += len(take)
            self.put_total += len(take)
            excess = len(self._items) - self.size
            for _ in range(excess):          # drop_oldest only: room made for the new ones
                self._items.popleft()
            self.dropped += max(0, excess)
            self._not_empty.set()

    async def get_batch(self, max_items: int) -> list[T]:
        """Wait for at least one item (or close), then return up to ``max_items``."""
        while not self._items:
            if self._closed:
                return []
            self._not_empty.clear()
            await self._not_empty.wait()
        n = min(max_items, len(self._items))
        if n == len(self._items):
            out = list(self._items)
            self._items.clear()
        else:
            out = [self._items.popleft() for _ in range(n)]
        if not self._items:
            self._not_empty.clear()
        self._not_full.set()
        return out

    def stats(self) -> dict[str, object]:
        return {"depth": len(self._items), "size": self.size, "overflow": self.overflow,
                "dropped": self.dropped, "put_total": self.put_total}
