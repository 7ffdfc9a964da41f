"""The body of GET /api/events: Server-Sent Events from an EventHub subscription.

Each alert record is one event: `id: <event id>` and `data: <record JSON>` (one line).

Exact resume (Last-Event-ID still in the hub's ring): the ring's events after that id,
then live events, each exactly once and in order.

Fallback (an id older than the ring, or from an earlier daemon process): the latest
record of every alert that changed since the time the id encodes (ids are microseconds,
see `events`), read from the case record, oldest first and without ids; then one id-only
event carrying the watermark (the newest id when the client subscribed), which the
browser keeps as its Last-Event-ID although it fires no message; then live events after
the watermark. A live event identical to a record already sent is skipped. A client
that resumes this way gets the current state of every alert it missed, not each
intermediate state, which is what a dashboard needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from tagwatch.feed.events import Event, Resume

RETRY_MS = 2_000  # the browser's reconnection delay
HEARTBEAT_S = 15.0  # a comment line, so idle proxies keep the connection and dead peers show


def format_event(event: Event) -> str:
    return f"id: {event.id}\ndata: {event.data}\n\n"


async def event_stream(
    resume: Resume,
    last_id: int | None,
    fallback: Callable[[int], Awaitable[list[tuple[dict, str]]]],
    heartbeat_s: float = HEARTBEAT_S,
) -> AsyncIterator[str]:
    """Yield SSE text until the client goes (the server cancels us) or falls behind."""
    sub = resume.subscription
    try:
        yield f"retry: {RETRY_MS}\n\n"
        sent = last_id or 0
        already: dict[str, dict] = {}
        if resume.exact:
            for event in resume.backlog:
                yield format_event(event)
                sent = event.id
        else:
            for record, data in await fallback(last_id or 0):
                already[record.get("id")] = record
                yield f"data: {data}\n\n"
            sent = resume.watermark
            yield f"id: {sent}\n\n"
        while True:
            try:
                event = await asyncio.wait_for(sub.queue.get(), heartbeat_s)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if sub.overflowed:
                return  # fell behind: the browser reconnects with the last id it got
            if event.id <= sent or already.get(event.record.get("id")) == event.record:
                continue
            yield format_event(event)
            sent = event.id
    finally:
        sub.close()
