"""Bounded queues: memory stays bounded and every dropped item is counted."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.agent.queues import BoundedQueue, Overflow


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


async def _through(q: BoundedQueue[int], wait: bool) -> list[int]:
    """50 items put (``wait``: waiting puts) while a consumer drains in batches of 3."""
    got: list[int] = []

    async def producer() -> None:
        for i in range(50):
            await q.put(i, wait=wait)
        q.close()

    async def consumer() -> None:
        while batch := await q.get_batch(3):
            assert len(q) <= 2
            got.extend(batch)
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(producer(), consumer()), 5)
    return got


async def test_block_applies_back_pressure_without_loss() -> None:
    q: BoundedQueue[int] = BoundedQueue("q", 2, "block")
    assert await _through(q, wait=False) == list(range(50)) and q.dropped == 0


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_a_waiting_put_never_drops_whatever_the_policy(policy: Overflow) -> None:
    """A recorded source (replay) waits for room; live sources on the same queue still drop."""
    q: BoundedQueue[int] = BoundedQueue("q", 2, policy)
    assert await _through(q, wait=True) == list(range(50)) and q.dropped == 0
    live: BoundedQueue[int] = BoundedQueue("q", 2, policy)
    for i in range(5):
        await live.put(i)
    assert live.dropped == 3


async def test_close_drains_then_returns_empty() -> None:
    q: BoundedQueue[int] = BoundedQueue("q", 5, "block")
    await q.put(1)
    q.close()
    assert await q.get_batch(5) == [1]
    assert await q.get_batch(5) == []
    with pytest.raises(RuntimeError, match="closed"):
        await q.put(2)


async def test_put_many_is_put_of_each_item_under_every_policy() -> None:
    for policy in ("drop_oldest", "drop_newest"):
        one: BoundedQueue[int] = BoundedQueue("one", 5, policy)
        many: BoundedQueue[int] = BoundedQueue("many", 5, policy)
        for batch in ([1, 2, 3], [4, 5, 6, 7], [8], list(range(9, 20))):
            for x in batch:
                await one.put(x)
            await many.put_many(batch)
            assert list(one._items) == list(many._items), policy
            assert (one.dropped, one.put_total) == (many.dropped, many.put_total), policy
    q: BoundedQueue[int] = BoundedQueue("block", 4, "block")
    putter = asyncio.create_task(q.put_many(list(range(10))))
    got: list[int] = []
    while len(got) < 10:
        got += await q.get_batch(3)   # the producer waits for room, nothing is lost
    await putter
    assert got == list(range(10)) and q.dropped == 0 and q.put_total == 10
    q.close()
    with pytest.raises(RuntimeError):
        await q.put_many([1])
