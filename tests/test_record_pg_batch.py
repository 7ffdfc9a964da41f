"""A batch commit on PostgreSQL (issue 21): few round trips, and still one transaction.

The round trips are counted from libpq's own protocol trace: every Sync or simple Query
the client sends is one wait for the server's answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tagwatch.record import Batch, Entry, OutboxItem, Record, RecordError
from tagwatch.record.db import COPY_ROWS
from tests.record_db import record_database
from tests.test_record import CHAIN, T0, alert, fix


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[tuple[Record, object]]:
    with record_database("postgresql", tmp_path) as db:
        record = Record.open(db.url)
        yield record, db
        record.close()


def _round_trips(record: Record, tmp_path: Path, batch: Batch, at: float) -> int:
    return _traced(record._db.conn, tmp_path, lambda: record.commit(batch, at))


def _traced(conn, tmp_path: Path, fn) -> int:
    from psycopg.pq import Trace

    trace = tmp_path / "trace.txt"
    with open(trace, "w") as out:
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        try:
            fn()
        finally:
            conn.pgconn.untrace()
    sent = [line for line in trace.read_text().splitlines() if line.startswith("F")]
    return sum(1 for line in sent if re.search(r"\t(Sync|Query)\b", line))


def _everything(i: int) -> Batch:
    return Batch(
        entries=[fix(i), fix(i + 1, tag="T-2002"), alert(f"a{i}", "open", i + 1),
                 Entry("system", "rejected", {"reason": "bad_json"})],
        outbox=[OutboxItem(f"a{i}", "sms", "+447700900123", {"text": "go"}, T0)],
        checkpoints={"T-1001": bytes(range(256)) * 3, "T-2002": b"\x00\\x"},
    )


def test_a_small_batch_commit_is_one_round_trip_on_chains_it_wrote_before(
        pg, tmp_path: Path) -> None:
    record, _db = pg
    record.commit(_everything(1), T0 + 10)  # creates the chain heads
    assert _round_trips(record, tmp_path, _everything(10), T0 + 11) == 1
    assert record.checkpoints() == {"T-1001": bytes(range(256)) * 3, "T-2002": b"\x00\\x"}
    assert [a["id"] for a in record.latest_alerts()] == ["a10", "a1"]
    assert record.outbox_depth() == 2
    assert record.verify() == []


def test_a_writer_new_to_the_chains_locks_their_heads_first(pg, tmp_path: Path) -> None:
    record, db = pg
    record.commit(_everything(1), T0 + 10)
    other = Record.open(db.url)
    try:
        assert _round_trips(other, tmp_path, _everything(10), T0 + 11) == 2  # + the lock
        assert _round_trips(other, tmp_path, _everything(20), T0 + 12) == 1
    finally:
        other.close()
    assert record.verify() == []


def test_a_writer_whose_known_head_another_moved_redoes_its_batch_locked(pg) -> None:
    # Both writers append to the same chain; each remembers the head it left. The first
    # one's next batch starts from a head that is no longer the chain's: its entry's seq is
    # taken, the transaction fails, and the batch is redone on the locked, current head.
    record, db = pg
    record.commit(Batch([fix(1)], [], {"T-1001": b"one"}), T0 + 10)
    other = Record.open(db.url)
    try:
        other.commit(Batch([fix(2)], [], {"T-1001": b"two"}), T0 + 11)
        record.commit(Batch([fix(3), alert("a3", "open", 3)], [], {"T-1001": b"three"}), T0 + 12)
        other.commit(Batch([fix(4)], [], {"T-1001": b"four"}), T0 + 13)
    finally:
        other.close()
    assert [f["seq"] for f in record.track("T-1001", 0)] == [1, 2, 3, 4]
    assert db.raw(f"SELECT seq FROM chain_heads WHERE chain = '{CHAIN}'") == [(5,)]
    assert [a["id"] for a in record.latest_alerts()] == ["a3"]
    assert record.checkpoints() == {"T-1001": b"four"}
    assert record.verify() == []


def test_a_big_batch_adds_only_its_copy(pg, tmp_path: Path) -> None:
    record, _db = pg
    record.commit(_everything(1), T0 + 10)
    big = Batch([fix(i) for i in range(100, 100 + COPY_ROWS)], [], {"T-1001": b"big"})
    assert _round_trips(record, tmp_path, big, T0 + 11) <= 4  # BEGIN + lock, COPY, COMMIT
    assert len(record.track("T-1001", 0)) == 1 + COPY_ROWS
    assert record.checkpoints()["T-1001"] == b"big"
    assert record.verify() == []


def test_a_statement_failing_late_in_the_pipeline_undoes_the_whole_batch(pg) -> None:
    record, db = pg
    record.commit(Batch([fix(1)], [], {"T-1001": b"one"}), T0 + 10)
    # the outbox row's alert_id NULL is refused by the server, after the entries went in
    bad = Batch([fix(2), alert("a2", "open", 2)], [OutboxItem(None, "sms", "+44", {}, T0)],
                {"T-1001": b"two"})
    with pytest.raises(RecordError, match="alert_id"):
        record.commit(bad, T0 + 11)
    assert [f["seq"] for f in record.track("T-1001", 0)] == [1]
    assert record.checkpoints() == {"T-1001": b"one"}
    assert record.latest_alerts() == []
    assert db.raw(f"SELECT seq FROM chain_heads WHERE chain = '{CHAIN}'") == [(1,)]
    record.commit(Batch([fix(2)], [], {"T-1001": b"two"}), T0 + 12)  # the connection is fine
    assert [f["seq"] for f in record.track("T-1001", 0)] == [1, 2]
    assert record.verify() == []


def test_a_one_query_read_is_two_round_trips_and_marking_rows_done_one(
        pg, tmp_path: Path) -> None:
    record, _db = pg
    record.commit(_everything(1), T0 + 10)
    record.outbox_depth()  # opens the reading connection
    assert _traced(record._reader.conn, tmp_path, record.outbox_depth) == 2
    due = record.outbox_due(T0 + 1)
    assert [r.alert_id for r in due] == ["a1"]
    assert _traced(record._db.conn, tmp_path,
                   lambda: record.outbox_done_many([r.id for r in due], {"sid": "x"})) == 1
    assert record.outbox_depth() == 0
    assert record.verify() == []  # a read transaction streaming rows


def test_checkpoints_sliced_from_one_binary_parameter_come_back_byte_for_byte(pg) -> None:
    # The states go concatenated in one bytea parameter, each row naming its offset and
    # length: every byte value, empty states, and states on either side of each other.
    record, _db = pg
    states = {
        "T-1001": bytes(range(256)) * 3,
        "T-2002": b"",
        'odd "key"\n\\ é': b"\x00",
        "T-3003": b"\xff" * 5000,
        **{f"T-{n}": bytes([n % 256]) * n for n in range(4000, 4040)},
    }
    record.commit(Batch([fix(1)], [], states), T0 + 1)
    assert record.checkpoints() == states
    changed = {"T-2002": b"now longer", "T-3003": b"", "T-9009": b"new"}
    record.commit(Batch([fix(2)], [], changed), T0 + 2)
    assert record.checkpoints() == states | changed


def test_the_tables_every_batch_rewrites_leave_room_on_each_page(pg) -> None:
    # So a new version of a chain head or a checkpoint stays on its page (a HOT update).
    _record, db = pg
    rows = db.raw(
        "SELECT relname, reloptions FROM pg_class "
        "WHERE oid IN ('chain_heads'::regclass, 'checkpoints'::regclass) ORDER BY relname"
    )
    assert rows == [("chain_heads", ["fillfactor=50"]), ("checkpoints", ["fillfactor=50"])]
