"""`tagwatch-sim record`: what crosses the broker on fix topics, as DESIGN 3.5 JSON lines.

Each line is `{"topic", "payload", "received"}` in arrival order; `payload` is
the fix object or array, or a string when the bytes were not JSON (so
`tagwatch replay` gives rejected input its usual reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import orjson

from simulators.broker import BrokerOptions
from simulators.runner import client
from tagwatch.wire import Topics, rfc3339


def capture_line(topic: str, payload: bytes, received: float) -> bytes:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        value = payload.decode("utf-8", errors="replace")
    return orjson.dumps({"topic": topic, "payload": value, "received": rfc3339(received)}) + b"\n"


async def record(
    broker_url: str | BrokerOptions,
    out: Path,
    prefix: str = "tagwatch/v1",
    duration_s: float | None = None,
    max_messages: int | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Capture fix messages until `duration_s` or `max_messages`; returns how many."""
    topics = Topics(prefix)
    count = 0
    async with client(broker_url, "tagwatch-sim-record") as mqtt:
        for flt in topics.fix_filters:
            await mqtt.subscribe(flt, qos=1)
        if ready is not None:
            ready.set()
        with open(out, "wb") as stream:
            async def take() -> None:
                nonlocal count
                async for message in mqtt.messages:
                    stream.write(capture_line(message.topic.value, bytes(message.payload),
                                              time.time()))
                    stream.flush()
                    count += 1
                    if max_messages is not None and count >= max_messages:
                        return

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(take(), duration_s)
    return count
