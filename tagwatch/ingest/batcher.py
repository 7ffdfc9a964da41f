"""Micro-batching: messages are drained into batches bounded by count and by time.

A pump task copies the connection's bursts of messages into a deque here, because
cancelling a wait on an async generator (the connection's `bursts()`) would close the
generator; cancelling a wait on an event is harmless. Bursts (what paho's thread handed
over between two wake-ups of the event loop), not single messages: passing each message
through two asyncio queues took 2.0 us of CPU a message from paho's thread to a batch,
bursts 1.2 (measured with 300,000 messages).

Fair batching (issue 16.8): with `key` (a fix topic: one tag), when more is queued than
a batch holds, the batch is shared max-min fairly among the keys waiting: each key gets
as many as it has queued up to a common level, the level as high as the batch allows
(water-filling). One tag's backlog then never fills a batch while another tag waits, and
a batch is never left short while anything waits. A key's messages are taken in arrival
order, and the batch keeps the arrival order of what it took; the rest stays queued in
its order.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from typing import Generic, Protocol, TypeVar

from tagwatch.ingest.mqtt import DROP, ENTER, LIMITED
from tagwatch.ingest.ratelimit import TokenBuckets

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self,
        batch_max: int,
        batch_wait_s: float,
        gate: RateGate | None = None,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.gate = gate  # what of a burst may enter the batches (RateGate)
        self.key = key  # fair batching by this key when more is queued than a batch holds
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
        if self.key is None or len(items) <= self.batch_max:
            return [items.popleft() for _ in range(min(len(items), self.batch_max))]
        return self._fair_take()

    def _fair_take(self) -> list[T]:
        """batch_max of the queued items, shared fairly among their keys (module
        docstring). O(queued items), paid only when more is queued than a batch holds;
        the queue is bounded by the broker's window of unacknowledged messages."""
        queued = list(self.items)
        self.items.clear()
        keys = [self.key(item) for item in queued]  # type: ignore[misc]
        left = fair_shares(collections.Counter(keys), self.batch_max)
        batch: list[T] = []
        for item, key in zip(queued, keys, strict=True):
            if left[key]:
                left[key] -= 1
                batch.append(item)
            else:
                self.items.append(item)
        return batch

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


def fair_shares(counts: dict[Hashable, int], room: int) -> dict[Hashable, int]:
    """Max-min fair shares of `room` places among keys with `counts` waiting (in order of
    first arrival): every key gets min(count, level), with the level as high as room
    allows; the places left below the next level go one each to the first keys over it.
    (Water-filling: a key that has fewer than another was given all it had.)"""
    shares: dict[Hashable, int] = {}
    fewest_first = sorted(counts, key=counts.__getitem__)
    for i, key in enumerate(fewest_first):
        if counts[key] > room // (len(fewest_first) - i):  # the rest are over the level
            break
        shares[key] = counts[key]  # all of it fits
        room -= counts[key]
    if len(shares) < len(counts):
        level, extra = divmod(room, len(counts) - len(shares))
        for key in counts:  # first arrivals first
            if key not in shares:
                shares[key] = level + (1 if extra > 0 else 0)
                extra -= 1
    return shares


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
    def limited(self) -> bool: ...


M = TypeVar("M", bound=_Arrived)


class RateGate(Generic[M]):
    """The per-tag rate limit at the door (DESIGN 3.2 rate_limited). The MQTT connection
    asks it (`verdict`, tagwatch.ingest.mqtt's Door) on paho's thread, from a message's topic
    and arrival time, before anything decodes the payload: a message over its fix
    topic's token bucket is dropped there (acknowledged in bulk, counted through
    `on_dropped`, never queued), except one per topic per REPORT_S, which comes through
    marked `limited` and is set aside by the batcher (`__call__`) for the daemon to
    record and publish as a rejection (`take`).
    So a flooding tag's excess never enters a batch nor the event loop.

    The decisions are the pipeline's (tagwatch.ingest.ratelimit on each message's
    `received`, in arrival order): `tagwatch replay` makes them again in Pipeline.process."""

    def __init__(
        self, buckets: TokenBuckets, on_dropped: Callable[[int], None] | None = None
    ) -> None:
        self.buckets = buckets
        self.on_dropped = on_dropped
        self.reported: list[M] = []
        # paho's thread asks for MQTT messages and the event loop for Traccar's POSTs
        self._lock = threading.Lock()

    def verdict(self, topic: str, received: float) -> int:
        """ENTER, LIMITED (to record) or DROP, for a message arriving on `topic`."""
        with self._lock:
            if self.buckets.admit(topic, received):
                return ENTER
            return LIMITED if self.buckets.report_due(topic, received) else DROP

    def dropped(self, count: int) -> None:
        if self.on_dropped is not None:
            self.on_dropped(count)

    def __call__(self, burst: list[M]) -> list[M]:
        """The burst without its `limited` messages, which wait for `take`."""
        if not any(msg.limited for msg in burst):
            return burst
        self.reported += [msg for msg in burst if msg.limited]
        return [msg for msg in burst if not msg.limited]

    @property
    def waiting(self) -> bool:
        return bool(self.reported)

    def take(self) -> list[M]:
        """The limited messages set aside since the last call, to record."""
        reported, self.reported = self.reported, []
        return reported
