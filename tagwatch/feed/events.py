"""EventHub: in-process fan-out of alert records to Server-Sent Events clients.

Event ids. Every published record gets an integer id, strictly increasing for the life
of the hub and, in practice, across restarts: id = max(previous id + 1, wall clock in
microseconds). So an id also says roughly when the record was published, which is what
lets a client whose id is too old for the ring resume from the case record (see
`tagwatch.feed.stream`).

Resume. The hub keeps the last `ring_size` events. A client that sends Last-Event-ID = n
gets exactly the events after n from the ring when n is still covered: n is at least the
id of the last event dropped from the ring and at least the hub's starting id (ids of an
earlier process are not in this ring). Otherwise `subscribe` answers `exact=False` and
the caller falls back to the record.

Slow clients. Each client has a bounded queue. `publish` never waits: when a client's
queue is full the client is marked `overflowed` and dropped from the hub; its stream
ends, and the browser's EventSource reconnects with Last-Event-ID and resumes from the
ring. The daemon and the other clients never wait for it.

Threads. `publish` may be called from any thread: ids are assigned under a lock, and
delivery to a client's asyncio queue goes through its event loop when called elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    id: int
    record: dict
    data: str  # the record as one line of JSON, encoded once for every client


class Subscription:
    """One SSE client's queue; created by `EventHub.subscribe`, used by one stream."""

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.overflowed = False
        self._hub = hub
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def offer(self, event: Event) -> None:
        if threading.get_ident() == self._thread:
            self._put(event)
        else:
            self._loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self._hub.unsubscribe(self)

    def close(self) -> None:
        self._hub.unsubscribe(self)


@dataclass(frozen=True)
class Resume:
    """What `subscribe` found for a client's Last-Event-ID."""

    subscription: Subscription
    backlog: list[Event]  # ring events after the client's id (exact resume only)
    exact: bool  # False: the id is older than the ring; resume from the record
    watermark: int  # the newest id published when the client subscribed


class EventHub:
    def __init__(
        self,
        ring_size: int = 10_000,
        client_queue: int = 2_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._ring: deque[Event] = deque()
        self._ring_size = ring_size
        self._client_queue = client_queue
        self._clock = clock
        self._last = self._now_us()
        self._floor = self._last  # ids at or below this may come from an earlier process
        self._evicted = 0  # id of the newest event dropped from the ring
        self._clients: set[Subscription] = set()
        self.dropped_clients = 0

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def publish(self, record: dict) -> int:
        """Send one alert record to every client; returns its event id. Never blocks."""
        data = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            self._last = max(self._last + 1, self._now_us())
            event = Event(self._last, record, data)
            self._ring.append(event)
            if len(self._ring) > self._ring_size:
                self._evicted = self._ring.popleft().id
            clients = tuple(self._clients)
        for client in clients:
            client.offer(event)
        return event.id

    def subscribe(self, last_id: int | None) -> Resume:
        """Register a client (call on the event loop that will read its queue)."""
        sub = Subscription(self, self._client_queue)
        with self._lock:
            self._clients.add(sub)
            watermark = self._last
            if last_id is None:
                return Resume(sub, [], True, watermark)
            exact = max(self._evicted, self._floor) <= last_id <= watermark
            backlog = [e for e in self._ring if e.id > last_id] if exact else []
        return Resume(sub, backlog, exact, watermark)

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._clients:
                self._clients.discard(sub)
                if sub.overflowed:
                    self.dropped_clients += 1

    @property
    def last_id(self) -> int:
        """The newest id published (or the starting id): a consistent point to resume from."""
        with self._lock:
            return self._last

    def stats(self) -> dict:
        with self._lock:
            return {
                "clients": len(self._clients),
                "ring": len(self._ring),
                "last_id": self._last,
                "dropped_clients": self.dropped_clients,
            }
