"""Micro-batching: messages are drained into batches bounded by count and by time.

A pump task copies the connection's messages into an asyncio.Queue, because cancelling
a wait on an async generator (the connection's `messages()`) would close the generator;
cancelling a wait on a queue is harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, batch_max: int, batch_wait_s: float) -> None:
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.queue: asyncio.Queue[T] = asyncio.Queue()

    async def pump(self, source: AsyncIterator[T]) -> None:
        async for item in source:
            self.queue.put_nowait(item)

    async def next_batch(self, stop: asyncio.Event, max_wait_s: float | None = None) -> list[T]:
        """The next batch: waits for a first item (at most max_wait_s, or until stop is
        set: then []), then takes more until batch_max or batch_wait_s."""
        first = await self._first(stop, max_wait_s)
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        queue = self.queue
        while len(batch) < self.batch_max:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0 or stop.is_set():
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _first(self, stop: asyncio.Event, max_wait_s: float | None) -> T | None:
        if not self.queue.empty():
            return self.queue.get_nowait()
        if stop.is_set():
            return None
        getter = asyncio.ensure_future(self.queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=max_wait_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
        if getter in done and not getter.cancelled():
            return getter.result()
        return None
