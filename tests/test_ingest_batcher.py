"""The daemon's micro-batcher: bursts in, batches out, in order, bounded by count and time."""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import AsyncIterator

from tagwatch.ingest.batcher import Batcher, fair_shares, isolate
from tagwatch.ingest.mqtt import Message
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


def test_the_gates_limited_messages_are_handed_back_even_when_they_came_alone() -> None:
    """The door (on paho's thread) enters, marks limited or drops each message; the batcher
    sets a limited one (the one of its REPORT_S to record) aside for the daemon, also
    when it came alone while nobody waited: its acknowledgement must not wait for
    another tag's message."""
    from tagwatch.ingest.batcher import RateGate
    from tagwatch.ingest.mqtt import DROP, ENTER, LIMITED
    from tagwatch.ingest.ratelimit import TokenBuckets

    gate = RateGate(TokenBuckets(1.0, 1))
    far = at_distance(100, 5000)
    arrivals = [T0, T0, T0, T0 + 10.5, T0 + 10.5]
    msgs, verdicts = [], []
    for i, at in enumerate(arrivals):
        m = tag_msg(fix(T0 + i, far), received=at)
        verdicts.append(gate.verdict(m.topic, at))
        msgs.append(Message(m.topic, m.payload, 1, i, at, limited=verdicts[-1] == LIMITED))
    assert verdicts == [ENTER, LIMITED, DROP, ENTER, LIMITED]

    async def scenario() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        batcher = Batcher(batch_max=10, batch_wait_s=0.0, gate=gate)
        pump = asyncio.create_task(batcher.pump(_bursts(queue)))
        stop = asyncio.Event()
        queue.put_nowait(msgs[:2])
        assert [m.mid for m in await batcher.next_batch(stop)] == [0]
        assert [m.mid for m in gate.take()] == [1]
        queue.put_nowait([msgs[4]])  # a limited one alone, while nobody waits
        while queue.qsize():
            await asyncio.sleep(0)  # let the pump take the burst (a yield, not a wait)
        assert await asyncio.wait_for(batcher.next_batch(stop), 5) == []
        assert [m.mid for m in gate.take()] == [4]
        queue.put_nowait(None)
        await pump

    _run(scenario)


def _fair(batch_max: int) -> Batcher[tuple[str, int]]:
    return Batcher(batch_max=batch_max, batch_wait_s=0.0, key=lambda m: m[0])


def _batches(batcher: Batcher, items: list) -> list[list]:
    """Every batch of `items` queued at once (as a burst the pump delivered)."""
    async def scenario() -> list[list]:
        batcher.items.extend(items)
        stop, out = asyncio.Event(), []
        while batcher.items:
            out.append(await batcher.next_batch(stop))
        return out

    return asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_flooding_tags_backlog_leaves_room_for_every_other_tags_waiting_message() -> None:
    """Fair batching (issue 16.8): 1,000 of one tag queued ahead of 30 of three others;
    the first batch holds all 30 and fills up with the flood's first 170, in arrival
    order; the flood's remainder follows in its own order."""
    flood = [("T-flood", i) for i in range(1000)]
    others = [(f"T-{i % 3}", i) for i in range(30)]
    batches = _batches(_fair(batch_max=200), flood + others)
    assert batches[0] == flood[:170] + others
    assert [len(b) for b in batches] == [200, 200, 200, 200, 200, 30]
    assert [m for b in batches for m in b if m[0] == "T-flood"] == flood  # its order kept


def test_fair_batches_are_max_min_fair_keep_each_tags_order_and_lose_nothing() -> None:
    """Interleaved tags, one heavy: in every batch, a tag with messages still waiting got
    at least as many as any other tag but one (max-min fairness); per tag, arrival order;
    every batch full while anything waits; nothing lost or repeated."""
    items = [("heavy" if i % 4 else f"T-{i % 7}", i) for i in range(3000)]
    batches = _batches(_fair(batch_max=100), items)
    assert sorted(m for b in batches for m in b) == sorted(items)
    for tag in {t for t, _ in items}:
        assert [i for b in batches for t, i in b if t == tag] == [
            i for t, i in items if t == tag]
    assert all(len(b) == 100 for b in batches[:-1])
    left = collections.Counter(t for t, _ in items)
    for batch in batches:
        got = collections.Counter(t for t, _ in batch)
        left.subtract(got)
        most = max(got.values())
        assert all(got[t] >= most - 1 for t in left if left[t] > 0), (got, left)
    assert batches[0].count(("heavy", 1)) == 1 and sum(
        1 for t, _ in batches[0] if t == "heavy") <= 13  # not 75 of 100, as in order


def test_fair_shares_fill_the_room_without_giving_a_key_more_than_it_has() -> None:
    assert fair_shares({"a": 1000, "b": 10, "c": 10, "d": 10}, 200) == {
        "a": 170, "b": 10, "c": 10, "d": 10}
    assert fair_shares({"a": 50, "b": 50, "c": 1}, 10) == {"c": 1, "a": 5, "b": 4}
    assert fair_shares({"a": 3, "b": 4}, 100) == {"a": 3, "b": 4}
    assert fair_shares({"a": 7, "b": 7, "c": 7}, 20) == {"a": 7, "b": 7, "c": 6}


def test_without_a_key_or_when_all_fits_batches_are_plain_arrival_order() -> None:
    items = [(f"T-{i % 2}", i) for i in range(25)]
    assert _batches(Batcher(batch_max=10, batch_wait_s=0.0), items) == [
        items[:10], items[10:20], items[20:]]
    assert _batches(_fair(batch_max=25), items) == [items]
