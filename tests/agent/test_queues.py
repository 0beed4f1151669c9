"""Bounded queues: memory stays bounded and every dropped item is counted."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.agent.queues import BoundedQueue


async def test_drop_oldest_keeps_newest_and_counts() -> None:
    q: BoundedQueue[int] = BoundedQueue("q", 3, "drop_oldest")
    for i in range(10):
        await q.put(i)
    assert len(q) == 3 and q.dropped == 7
    assert await q.get_batch(10) == [7, 8, 9]


async def test_drop_newest_keeps_oldest_and_counts() -> None:
    q: BoundedQueue[int] = BoundedQueue("q", 3, "drop_newest")
    for i in range(10):
        await q.put(i)
    assert q.dropped == 7
    assert await q.get_batch(10) == [0, 1, 2]


async def test_block_applies_back_pressure_without_loss() -> None:
    q: BoundedQueue[int] = BoundedQueue("q", 2, "block")
    got: list[int] = []

    async def producer() -> None:
        for i in range(50):
            await q.put(i)
        q.close()

    async def consumer() -> None:
        while batch := await q.get_batch(3):
            assert len(q) <= 2
            got.extend(batch)
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(producer(), consumer()), 5)
    assert got == list(range(50)) and q.dropped == 0


async def test_close_drains_then_returns_empty() -> None:
    q: BoundedQueue[int] = BoundedQueue("q", 5, "block")
    await q.put(1)
    q.close()
    assert await q.get_batch(5) == [1]
    assert await q.get_batch(5) == []
    with pytest.raises(RuntimeError, match="closed"):
        await q.put(2)
