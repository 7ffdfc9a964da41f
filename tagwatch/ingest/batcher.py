"""Micro-batching: messages are drained into batches bounded by count and by time.

A pump task copies the connection's bursts of messages into a deque here, because
cancelling a wait on an async generator (the connection's `bursts()`) would close the
generator; cancelling a wait on an event is harmless. Bursts (what paho's thread handed
over between two wake-ups of the event loop), not single messages: passing each message
through two asyncio queues took 2.0 us of CPU a message from paho's thread to a batch,
bursts 1.2 (measured with 300,000 messages).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from tagwatch.ingest.ratelimit import TokenBuckets

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self,
        batch_max: int,
        batch_wait_s: float,
        gate: RateGate | None = None,
    ) -> None:
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.gate = gate  # what of a burst may enter the batches (RateGate)
        self.items: collections.deque[T] = collections.deque()
        self._arrived = asyncio.Event()

    async def pump(self, source: AsyncIterator[list[T]]) -> None:
        gate = self.gate
        async for burst in source:
            if gate is not None:
                burst = gate(burst)
            self.items.extend(burst)
            self._arrived.set()  # also when the gate kept nothing: its excess is waiting

    async def next_batch(self, stop: asyncio.Event, max_wait_s: float | None = None) -> list[T]:
        """The next batch, in arrival order: waits for a first item (at most max_wait_s,
        or until stop is set: then []), then for more until batch_max or batch_wait_s.
        A burst the gate kept nothing of ends the wait too (then [] after batch_wait_s),
        so that its excess is acknowledged without waiting for another tag's message."""
        if not self.items:
            gate = self.gate
            if gate is not None and gate.waiting:
                return []  # the gate's excess came while nobody waited: take it first
            if not await self._arrival(stop, max_wait_s) or not self.items:
                return []  # stopped, timed out, or the gate kept nothing of the burst
        deadline = time.monotonic() + self.batch_wait_s
        while len(self.items) < self.batch_max:
            left = deadline - time.monotonic()
            if left <= 0 or not await self._arrival(stop, left):
                break
        items = self.items
        return [items.popleft() for _ in range(min(len(items), self.batch_max))]

    async def _arrival(self, stop: asyncio.Event, timeout: float | None) -> bool:
        """Wait for the pump's next burst: True when it came, False when stop was set or
        timeout passed first."""
        self._arrived.clear()  # no await since the caller looked: nothing came meanwhile
        if stop.is_set():
            return False
        arrived = asyncio.ensure_future(self._arrived.wait())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {arrived, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            arrived.cancel()
            stopper.cancel()
        return arrived in done


async def isolate(
    messages: Sequence[T],
    handle: Callable[[Sequence[T]], Awaitable[None]],
    set_aside: Callable[[T, Exception], Awaitable[None]],
) -> int:
    """Handle `messages` in arrival order so that a failing message costs only itself.

    `handle` does a piece's whole unit of work (and undoes it when it raises). A piece
    whose handling raises is split in two halves, the first handled first, until the
    failing messages are found: each goes to `set_aside` with its error; every other
    message is handled as usual, in the same order. Returns how many pieces failed
    (0 for a healthy batch; about 2 log2(n) per failing message of a batch of n).
    """
    failures = 0
    pieces = [messages]
    while pieces:
        piece = pieces.pop()
        try:
            await handle(piece)
        except Exception as exc:
            failures += 1
            if len(piece) == 1:
                await set_aside(piece[0], exc)
            else:
                half = len(piece) // 2
                pieces += (piece[half:], piece[:half])  # the first half is popped first
    return failures


class _Arrived(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def received(self) -> float: ...


M = TypeVar("M", bound=_Arrived)


class RateGate(Generic[M]):
    """The per-tag rate limit at the door (DESIGN 3.2 rate_limited): a message over its fix
    topic's token bucket never enters a batch, so a flooding tag's excess costs a dict
    lookup and an acknowledgement, and the other tags' messages do not queue behind it.

    The decisions are the pipeline's (tagwatch.ingest.ratelimit on each message's `received`, in
    arrival order): `tagwatch replay` makes them again in Pipeline.process. `take` hands
    the daemon the excess to acknowledge and count, and, one per topic per REPORT_S, the
    messages to record and publish as rejections."""

    def __init__(self, buckets: TokenBuckets) -> None:
        self.buckets = buckets
        self.excess: list[M] = []
        self.reported: list[M] = []

    def __call__(self, burst: list[M]) -> list[M]:
        admit, report_due = self.buckets.admit, self.buckets.report_due
        kept = []
        for msg in burst:
            topic, received = msg.topic, msg.received
            if admit(topic, received):
                kept.append(msg)
            elif report_due(topic, received):
                self.reported.append(msg)
            else:
                self.excess.append(msg)
        return kept

    @property
    def waiting(self) -> bool:
        return bool(self.excess or self.reported)

    def take(self) -> tuple[list[M], list[M]]:
        """(excess, reported) since the last call."""
        excess, reported = self.excess, self.reported
        self.excess, self.reported = [], []
        return excess, reported
