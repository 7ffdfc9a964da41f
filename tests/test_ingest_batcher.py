"""The daemon's micro-batcher: bursts in, batches out, in order, bounded by count and time."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from tagwatch.ingest.batcher import Batcher, isolate
from tests.tracks import (
    TAG,
    at_distance,
    fix,
    one_by_one,
    pipeline,
    run,
    tag_msg,
    times,
    track,
    utc,
    without_protection,
)

T0 = utc("2026-07-06T10:00:00Z")


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


# -- a failing message costs only itself (issue 16.1) ----------------------------------


def test_isolate_sets_aside_exactly_the_failing_messages_and_handles_the_rest_in_order() -> None:
    poison = {3, 4, 11}
    handled: list[int] = []
    set_aside: list[tuple[int, str]] = []

    async def handle(piece) -> None:
        if poison & set(piece):
            raise ValueError(f"poison in {list(piece)}")
        handled.extend(piece)

    async def aside(item: int, error: Exception) -> None:
        set_aside.append((item, type(error).__name__))

    failures = asyncio.run(isolate(list(range(16)), handle, aside))
    assert handled == [i for i in range(16) if i not in poison]
    assert set_aside == [(3, "ValueError"), (4, "ValueError"), (11, "ValueError")]
    # 0-15, 0-7, 0-3, 2-3, 3; 4-7, 4-5, 4; 8-15, 8-11, 10-11, 11
    assert failures == 12
    assert asyncio.run(isolate([1, 2], handle, aside)) == 0  # a healthy batch: one call


def test_a_failed_batch_is_undone_and_its_good_fixes_still_raise_the_breach() -> None:
    """A real pipeline whose batch fails half way (after decoding: the fixes are already
    remembered for duplicate detection). Undone to the committed checkpoints, its good
    fixes give exactly the alerts they give without the poison message; without the undo
    they would be dropped as duplicates and the breach lost."""
    fixes = track([at_distance(100, d) for d in (300, 200, -20, -20, -20)], times(T0, 30, 5))
    poison = tag_msg({**fix(T0 + 40, at_distance(100, 250)), "note": "FAULT"})
    clean = run([one_by_one(fixes)]).summary()
    assert ("zone.breach", "updated", "critical", "confirmed") in clean

    pipe = pipeline()
    pipe.fault = b"FAULT"
    committed: dict[str, bytes] = {}
    records = []

    async def handle(piece) -> None:
        try:
            result = pipe.process(list(piece))
        except Exception:
            pipe.reset(committed)
            raise
        committed.update(pipe.checkpoints())
        records.extend(result.records)

    rejected = []

    async def aside(msg, error: Exception) -> None:
        rejected.extend(pipe.set_aside(msg, error).rejected)

    messages = one_by_one(fixes)
    messages.insert(1, poison)
    assert asyncio.run(isolate(messages, handle, aside)) > 0
    # the rule records, as run() gives them (the protection status ones have their own tests)
    assert [(r.type, r.state, r.severity, r.confidence)
            for r in without_protection(records)] == clean
    (rej,) = rejected
    assert rej.source == TAG and rej.rejection.reason == "internal_error"
    assert hashlib.sha256(poison.payload).hexdigest() in rej.rejection.detail
    assert "InjectedFault" in rej.rejection.detail


def test_the_gates_excess_is_handed_back_even_when_it_came_while_nobody_waited() -> None:
    """The excess of a flood must be acknowledged although no other message follows it:
    the broker sends nothing more while its window of unacknowledged messages is full."""
    from tagwatch.ingest.batcher import RateGate
    from tagwatch.ingest.ratelimit import TokenBuckets

    def msg(i: int):
        return tag_msg(fix(T0 + i, at_distance(100, 5000)), received=T0)

    async def scenario() -> None:
        gate = RateGate(TokenBuckets(1.0, 1))
        batcher = Batcher(batch_max=10, batch_wait_s=0.0, gate=gate)
        queue: asyncio.Queue = asyncio.Queue()
        pump = asyncio.create_task(batcher.pump(_bursts(queue)))
        stop = asyncio.Event()
        queue.put_nowait([msg(0), msg(1)])  # kept, then reported
        assert [m.payload for m in await batcher.next_batch(stop)] == [msg(0).payload]
        queue.put_nowait([msg(2), msg(3)])  # excess only, while nobody waits
        while queue.qsize():
            await asyncio.sleep(0)  # let the pump take the burst (a yield, not a wait)
        await asyncio.sleep(0)
        assert await asyncio.wait_for(batcher.next_batch(stop), 5) == []
        excess, reported = gate.take()
        assert (len(excess), len(reported)) == (2, 1)
        queue.put_nowait([msg(4)])  # a burst the gate keeps nothing of ends a wait at once
        assert await asyncio.wait_for(batcher.next_batch(stop), 5) == []
        assert len(gate.take()[0]) == 1
        queue.put_nowait(None)
        await pump

    _run(scenario)
