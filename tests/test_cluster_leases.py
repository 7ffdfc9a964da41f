"""Cluster mode's leases and fence on a real PostgreSQL (DESIGN 7, issue 20 item 1).

Leases (tagwatch/ingest/leases.py) spread partitions over live workers and are taken over
only after expiry, with a new epoch; the record refuses a batch committed under an old
epoch (Record.commit's fence) and a takeover never overlaps a commit in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tagwatch.ingest.leases import Leases
from tagwatch.record import Batch, Fence, Fenced, Record, RecordError
from tagwatch.record.store import _FENCE
from tests.record_db import RecordDb, record_database
from tests.test_record import T0, fix
from tests.test_record_pg_batch import _traced

TTL = 1.0


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[RecordDb]:
    with record_database("postgresql", tmp_path) as db:
        yield db


def _workers(db: RecordDb, *names: str, k: int = 4) -> list[Leases]:
    Record.open(db.url).close()  # the record's schema first (leases add an outbox column)
    out = []
    for name in names:
        leases = Leases(db.url, name, k, TTL)
        leases.setup()
        out.append(leases)
    return out


def _until(check, what: str, timeout_s: float = 10.0):
    """Poll `check` (a lease round against the database's clock) until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _entries(db: RecordDb) -> int:
    return db.raw("SELECT count(*) FROM entries")[0][0]


def test_one_worker_takes_every_partition_and_renews_them(pg) -> None:
    (w1,) = _workers(pg, "w1")
    first = w1.round()
    assert first.acquired == {0: 1, 1: 1, 2: 1, 3: 1}
    again = w1.round()
    assert again.acquired == {} and again.lost == [] and again.renewed == 4
    assert w1.held == {0: 1, 1: 1, 2: 1, 3: 1}


def test_a_newcomer_gets_its_share_and_nobody_takes_a_live_lease(pg) -> None:
    w1, w2 = _workers(pg, "w1", "w2")
    w1.round()
    assert w2.round().acquired == {}  # nothing free yet: w1's leases are live

    def spread() -> bool:
        w1.release(w1.round().surplus)
        w2.round()
        return len(w1.held) == 2 and len(w2.held) == 2

    _until(spread, "two partitions each")
    assert set(w1.held).isdisjoint(w2.held)
    assert all(epoch == 2 for epoch in w2.held.values())  # released, then re-acquired


def test_an_expired_lease_is_taken_over_with_a_new_epoch_and_the_old_owner_loses_it(
    pg,
) -> None:
    w1, w2 = _workers(pg, "w1", "w2", k=2)
    w1.round()
    assert w1.held == {0: 1, 1: 1}
    # w1 stops renewing (a kill -9, a SIGSTOP): w2 gets both only after expiry
    _until(lambda: w2.round() and len(w2.held) == 2, "w2 takes both over")
    assert w2.held == {0: 2, 1: 2}
    back = w1.round()  # the zombie wakes up
    assert sorted(back.lost) == [0, 1]
    assert set(w1.held).isdisjoint(w2.held)


def test_a_commit_under_an_old_epoch_is_refused_and_writes_nothing(pg) -> None:
    w1, w2 = _workers(pg, "w1", "w2", k=1)
    w1.round()
    record = Record.open(pg.url)
    try:
        record.commit(Batch([fix(1)]), T0, fence=w1.fence(0))
        old = w1.fence(0)
        _until(lambda: w2.round().acquired, "w2 takes over")
        before = _entries(pg)
        with pytest.raises(Fenced, match="partition 0: worker 'w1' no longer holds") as info:
            record.commit(Batch([fix(2)]), T0 + 1, fence=old)
        assert info.value.partitions == [0]
        assert _entries(pg) == before
        record.commit(Batch([fix(3)]), T0 + 2, fence=w2.fence(0))  # the new owner's works
        assert _entries(pg) == before + 1
        assert record.verify() == []
    finally:
        record.close()


def test_a_released_partition_fences_its_last_owner(pg) -> None:
    (w1,) = _workers(pg, "w1", k=1)
    w1.round()
    fence = w1.fence(0)
    w1.release([0])
    record = Record.open(pg.url)
    try:
        with pytest.raises(Fenced):
            record.commit(Batch([fix(1)]), T0, fence=fence)
    finally:
        record.close()


def test_a_takeover_waits_for_the_old_owners_commit_in_flight(pg) -> None:
    w1, w2 = _workers(pg, "w1", "w2", k=1)
    w1.round()
    fence = w1.fence(0)
    with psycopg.connect(pg.url) as conn:  # w1's batch transaction, fence taken, not ended
        conn.execute(_FENCE.replace("?", "%s"), ("60000", [0], [fence.owner], [fence.epoch]))
        # still at work (a statement running, not idle) when the lease expires
        busy = threading.Thread(target=conn.execute, args=(f"SELECT pg_sleep({TTL + 1.0})",))
        busy.start()
        time.sleep(TTL + 0.3)  # the lease expires while the commit is in flight
        assert w2.round().acquired == {}, "taken over while a commit of w1 was in flight"
        busy.join()
        conn.commit()
    assert _until(lambda: w2.round().acquired, "w2 takes over after the commit") == {0: 2}


def test_a_fence_left_idle_past_the_ttl_is_ended_by_the_next_owner(pg) -> None:
    """A process stopped halfway through its commit (SIGSTOP) leaves its fence idle in
    its transaction; the server's idle timeout does not fire after a pipelined statement
    (docs/CLUSTER.md), so the worker about to take the partition ends it."""
    w1, w2 = _workers(pg, "w1", "w2", k=1)
    w1.round()
    fence = w1.fence(0)
    with psycopg.connect(pg.url) as conn:
        conn.execute(_FENCE.replace("?", "%s"), ("60000", [0], [fence.owner], [fence.epoch]))
        assert _until(lambda: w2.round().acquired, "w2 takes over") == {0: 2}
        with pytest.raises(psycopg.OperationalError):
            conn.commit()  # ended by the server: nothing of the stopped commit lands


def test_a_fenced_commit_costs_one_round_trip_more(pg, tmp_path: Path) -> None:
    (w1,) = _workers(pg, "w1", k=1)
    w1.round()
    record = Record.open(pg.url)
    try:
        record.commit(Batch([fix(1)]), T0)  # creates the chain head
        fence = w1.fence(0)
        plain = _traced(record._db.conn, tmp_path, lambda: record.commit(Batch([fix(2)]), T0))
        fenced = _traced(
            record._db.conn, tmp_path, lambda: record.commit(Batch([fix(3)]), T0, fence=fence)
        )
        assert fenced == plain + 1
    finally:
        record.close()


def test_a_fence_on_sqlite_is_an_error(tmp_path: Path) -> None:
    record = Record.open(f"sqlite://{tmp_path}/r.db")
    try:
        with pytest.raises(RecordError, match="needs PostgreSQL"):
            record.commit(Batch([fix(1)]), T0, fence=Fence(0, "w1", 1))
    finally:
        record.close()


def test_leases_refuse_a_sqlite_record_and_a_different_partition_count(pg) -> None:
    with pytest.raises(RecordError, match="cluster mode needs a PostgreSQL record"):
        Leases("sqlite:///tmp/x.db", "w1", 4, TTL)
    _workers(pg, "w1", k=4)
    with pytest.raises(RecordError, match=r"partitions = 8, but .* 4 partitions"):
        Leases(pg.url, "w2", 8, TTL).setup()


def test_a_commit_under_several_fences_is_refused_when_any_is_lost(pg) -> None:
    (w1,) = _workers(pg, "w1", k=2)
    w1.round()
    both = [w1.fence(0), w1.fence(1)]
    record = Record.open(pg.url)
    try:
        record.commit(Batch([fix(1)]), T0, fence=both)
        w1.release([1])
        with pytest.raises(Fenced) as info:
            record.commit(Batch([fix(2)]), T0 + 1, fence=both)
        assert info.value.partitions == [1]
    finally:
        record.close()


def test_a_commit_stopped_inside_its_transaction_is_ended_and_no_longer_blocks_a_takeover(
    pg,
) -> None:
    """A SIGSTOPped worker halfway through a batch would hold its lease row's lock; the
    transaction's idle timeout (Record.fence_idle_s) ends it, so the takeover goes on."""
    w1, w2 = _workers(pg, "w1", "w2", k=1)
    w1.round()
    fence = w1.fence(0)
    with psycopg.connect(pg.url) as conn:
        conn.execute(_FENCE.replace("?", "%s"), ("300", [0], [fence.owner], [fence.epoch]))
        # ... and the process stops here
        assert _until(lambda: w2.round().acquired, "w2 takes over") == {0: 2}
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            conn.execute("SELECT 1")  # the stopped transaction was ended by the server


def test_outbox_rows_carry_their_partition_and_each_owner_sees_its_own(pg) -> None:
    from tagwatch.record import OutboxItem

    _workers(pg, "w1", k=4)  # adds the outbox's partition column
    record = Record.open(pg.url)
    try:
        items = [OutboxItem(f"a{p}", "sms", "+447700900123", {"p": p}, T0, partition=p)
                 for p in range(4)]
        record.commit(Batch(outbox=items), T0)
        due = record.outbox_due(T0 + 1, partitions=[1, 3])
        assert sorted(r.alert_id for r in due) == ["a1", "a3"]
        assert record.outbox_due(T0 + 1, partitions=[]) == []
        assert len(record.outbox_due(T0 + 1)) == 4  # a single process sees every row
    finally:
        record.close()


def test_workers_starting_together_open_a_new_record_without_a_race(tmp_path: Path) -> None:
    """Two workers of a new deployment start at once: both create the record's schema.
    Creating the version table raced (CREATE TABLE IF NOT EXISTS is not safe against a
    concurrent one: duplicate key in pg_type) and one worker exited."""
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(5):
        with record_database("postgresql", tmp_path) as db:
            with ThreadPoolExecutor(4) as pool:
                records = list(pool.map(lambda _i: Record.open(db.url), range(4)))
            for record in records:
                record.close()
