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
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from pydantic import Field

from edge_agent.settings import Model

T = TypeVar("T")

Overflow = Literal["block", "drop_oldest", "drop_newest"]


class QueueConfig(Model):
    size: int = Field(10_000, gt=0)
    overflow: Overflow = "block"


def _one(item: object) -> int:
    return 1


class BoundedQueue(Generic[T]):
    """``size``, ``dropped`` and ``put_total`` count weight: 1 per item, or what ``weight``
    says (e.g. the readings in a block of them). An item heavier than the room left waits (or
    is dropped) whole; one heavier than ``size`` is let into an empty queue alone."""

    def __init__(self, name: str, size: int, overflow: Overflow,
                 weight: Callable[[T], int] = _one) -> None:
        self.name = name
        self.size = size
        self.overflow = overflow
        self.weight = weight
        self.dropped = 0
        self.put_total = 0
        self._w = 0  # weight queued
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = False

    def __len__(self) -> int:
        return self._w

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more puts; getters drain what is left and then get an empty batch."""
        self._closed = True
        self._not_empty.set()
        self._not_full.set()

    def _offer(self, item: T, w: int, wait: bool = False) -> bool:
        """Queue ``item`` (or drop by the policy; ``wait``: never drop); False: the producer
        must wait for room."""
        if self._closed:
            raise RuntimeError(f"queue {self.name} is closed")
        while self._items and self._w + w > self.size:
            if wait or self.overflow == "block":
                return False
            if self.overflow == "drop_newest":
                self.dropped += w
                return True
            _, old = self._items.popleft()  # drop_oldest
            self._w -= old
            self.dropped += old
        self._items.append((item, w))
        self._w += w
        self.put_total += w
        self._not_empty.set()
        return True

    async def put(self, item: T, *, wait: bool = False) -> None:
        """Queue ``item`` by the overflow policy; ``wait``: wait for room whatever the policy
        (a recording can wait, a live source cannot)."""
        w = self.weight(item)
        while not self._offer(item, w, wait):
            self._not_full.clear()
            await self._not_full.wait()

    async def put_many(self, items: list[T]) -> None:
        """``put`` of each item in order, with the same overflow policy (one driver read is
        one call, not one coroutine per reading)."""
        weight, offer = self.weight, self._offer
        for item in items:
            w = weight(item)
            while not offer(item, w):
                self._not_full.clear()
                await self._not_full.wait()

    async def get_batch(self, max_items: int) -> list[T]:
        """Wait for at least one item (or close), then return items weighing up to
        ``max_items`` together (at least one)."""
        while not self._items:
            if self._closed:
                return []
            self._not_empty.clear()
            await self._not_empty.wait()
        items = self._items
        if self._w <= max_items:
            out = [it for it, _ in items]
            items.clear()
            self._w = 0
        else:
            out = []
            taken = 0
            while items and (not out or taken + items[0][1] <= max_items):
                it, w = items.popleft()
                out.append(it)
                taken += w
            self._w -= taken
        if not items:
            self._not_empty.clear()
        self._not_full.set()
        return out

    def stats(self) -> dict[str, object]:
        return {"depth": self._w, "size": self.size, "overflow": self.overflow,
                "dropped": self.dropped, "put_total": self.put_total}
