"""The daemon's micro-batcher: bursts in, batches out, in order, bounded by count and time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tagwatch.daemon.ingest import Batcher


async def _bursts(queue: asyncio.Queue) -> AsyncIterator[list[int]]:
    while (burst := await queue.get()) is not None:
        yield burst


def _run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_bursts_come_out_in_order_in_batches_of_at_most_batch_max() -> None:
    async def scenario() -> None:
        batcher: Batcher[int] = Batcher(batch_max=4, batch_wait_s=0.0)
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(batcher.pump(_bursts(queue)))
        for burst in ([0, 1, 2], [3], [4, 5, 6, 7, 8, 9]):
            queue.put_nowait(burst)
        got: list[int] = []
        stop = asyncio.Event()
        while len(got) < 10:
            batch = await batcher.next_batch(stop)
            assert 1 <= len(batch) <= 4
            got.extend(batch)
        assert got == list(range(10))
        queue.put_nowait(None)
        await pump

    _run(scenario)


def test_a_batch_waits_batch_wait_s_for_more_then_takes_what_came() -> None:
    """The first item opens the batch; a burst that comes within batch_wait_s joins it."""

    async def scenario() -> None:
        batcher: Batcher[int] = Batcher(batch_max=100, batch_wait_s=30.0)  # > the 10 s limit
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(batcher.pump(_bursts(queue)))
        queue.put_nowait([1])
        waiting = asyncio.create_task(batcher.next_batch(asyncio.Event()))
        await asyncio.sleep(0)  # let the batcher take the first and start waiting
        queue.put_nowait([2, 3])
        queue.put_nowait(list(range(4, 101)))  # reaches batch_max: no need to wait longer
        assert await waiting == list(range(1, 101))
        queue.put_nowait(None)
        await pump

    _run(scenario)


def test_nothing_comes_within_max_wait_or_stop_is_set_then_the_batch_is_empty() -> None:
    async def scenario() -> None:
        batcher: Batcher[int] = Batcher(batch_max=10, batch_wait_s=0.0)
        stop = asyncio.Event()
        assert await batcher.next_batch(stop, max_wait_s=0.01) == []
        waiting = asyncio.create_task(batcher.next_batch(stop))
        await asyncio.sleep(0)
        stop.set()
        assert await waiting == []

    _run(scenario)


def test_items_already_there_are_taken_even_when_stop_is_set() -> None:
    """Draining on SIGTERM: what was received is still batched (and committed)."""

    async def scenario() -> None:
        batcher: Batcher[int] = Batcher(batch_max=10, batch_wait_s=5.0)
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(batcher.pump(_bursts(queue)))
        queue.put_nowait([7, 8])
        queue.put_nowait(None)
        await pump
        stop = asyncio.Event()
        stop.set()
        assert await batcher.next_batch(stop) == [7, 8]
        assert await batcher.next_batch(stop) == []

    _run(scenario)
