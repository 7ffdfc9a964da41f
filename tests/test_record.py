"""The case record on SQLite, and on PostgreSQL when TAGWATCH_TEST_POSTGRES names one.

Each PostgreSQL test runs in its own schema, dropped afterwards. Tampering tests first drop
the append-only triggers, as an attacker with database rights could.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tagwatch.record import (
    Batch,
    Entry,
    OutboxItem,
    Record,
    RecordError,
    RecordUnavailable,
)
from tagwatch.record.canon import canonical
from tests.record_db import RecordDb, record_database, shipped_role

T0 = 1_764_324_930.0
CHAIN = "case:C-0001"


Backend = RecordDb  # the database under a test's record, reachable behind its back


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with record_database(request.param, tmp_path) as db:
        yield db


@pytest.fixture
def record(backend: Backend) -> Iterator[Record]:
    rec = Record.open(backend.url)
    yield rec
    rec.close()


def fix(i: int, tag: str = "T-1001", chain: str = CHAIN) -> Entry:
    body = {"tag": tag, "ts": T0 + i, "lat": 51.5 + i * 1e-4, "lon": -0.12, "acc": 8.0,
            "seq": i, "note": "naïve ✓"}
    return Entry(chain, "fix", body, tag=tag, event_ts=T0 + i)


def alert(alert_id: str, state: str, i: int, chain: str = CHAIN) -> Entry:
    body = {"id": alert_id, "type": "zone.breach", "state": state, "case": chain[5:],
            "eta_s": None, "ts": T0 + i}
    return Entry(chain, "alert", body, tag="T-1001", event_ts=T0 + i, alert_id=alert_id)


def five_fixes(record: Record) -> None:
    for i in range(1, 6):
        record.commit(Batch([fix(i)], [], {}), T0 + 100 + i)


def found(record: Record, chain: str | None = CHAIN) -> set[tuple[int, str]]:
    return {(p.seq, p.what) for p in record.verify(chain)}


# --- writing and reading --------------------------------------------------------------


def test_commit_then_read_back(record: Record) -> None:
    batch = Batch(
        entries=[fix(1), fix(2), alert("a1", "open", 2), fix(3, tag="T-2002"),
                 Entry("system", "rejected", {"reason": "bad_json"})],
        outbox=[OutboxItem("a1", "sms", "+447700900123", {"text": "go"}, T0)],
        checkpoints={"T-1001": b"\x00state-1", "T-2002": b"other"},
    )
    record.commit(batch, T0 + 10)
    record.commit(Batch([alert("a1", "resolved", 4), alert("a2", "open", 5)], [],
                        {"T-1001": b"\x00state-2"}), T0 + 11)

    assert [f["seq"] for f in record.track("T-1001", T0)] == [1, 2]
    assert [f["seq"] for f in record.track("T-1001", T0 + 2)] == [2]
    assert record.track("T-1001", T0)[0]["note"] == "naïve ✓"
    assert record.checkpoints() == {"T-1001": b"\x00state-2", "T-2002": b"other"}
    assert [a["id"] for a in record.latest_alerts()] == ["a2", "a1"]
    assert [a["id"] for a in record.latest_alerts("open")] == ["a2"]
    assert [a["state"] for a in record.latest_alerts("resolved")] == ["resolved"]
    history = record.alert_history("a1")
    assert [(h["seq"], h["body"]["state"]) for h in history] == [(3, "open"), (5, "resolved")]
    assert record.outbox_depth() == 1
    assert record.verify() == []


def test_hash_is_sha256_of_prev_hash_and_canonical_json(record: Record) -> None:
    """Hash rule 2 (schema 2): the body enters the hash through body_hash."""
    record.commit(Batch([fix(1), fix(2)], [], {}), T0 + 10)
    assert record.alert_history("unknown") == []
    record.commit(Batch([alert("a1", "open", 3)], [], {}), T0 + 11)
    entry = record.alert_history("a1")[0]
    body = json.dumps(entry["body"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert entry["body_hash"] == hashlib.sha256(body.encode()).hexdigest()
    doc = [CHAIN, 3, "alert", "T-1001", T0 + 3, "a1", T0 + 11, entry["body_hash"]]
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(entry["prev_hash"].encode() + text.encode()).hexdigest()
    assert (entry["seq"], entry["hash_rule"]) == (3, 2)
    assert entry["hash"] == expected


@pytest.mark.parametrize(
    "body",
    [
        {"spd": None, "lat": 51.5, "ts": T0, "acc": 8.0, "seq": 7, "late": False},
        {"spd": None, "tiny": 1e-05, "small": 0.0001, "huge": 1e16, "big": 9e15, "zero": -0.0},
        {"n": None, "nested": [{"b": 2.5e-7, "a": "é\u2028\x01"}, (1, None, 3e20)]},
    ],
)
def test_canonical_text_of_a_body_with_a_null_is_the_strict_encoders(body: dict) -> None:
    """A body with a null (most fixes) is written exactly as the strict encoder writes it,
    the fast path included: Python spells 1e-05, orjson 0.00001."""
    strict = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    assert canonical(body, "body") == strict


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_canonical_refuses_non_finite_numbers_beside_a_null(bad: float) -> None:
    with pytest.raises(RecordError, match="not canonical JSON"):
        canonical({"spd": None, "lat": bad}, "body")


def test_one_bad_entry_rolls_back_the_whole_batch(record: Record) -> None:
    record.commit(Batch([fix(1)], [], {"T-1001": b"one"}), T0 + 10)
    bad = Entry(CHAIN, "fix", {"lat": float("nan")}, tag="T-1001", event_ts=T0 + 3)
    batch = Batch([fix(2), bad], [OutboxItem("a1", "sms", "+4477", {}, T0)], {"T-1001": b"two"})
    with pytest.raises(RecordError, match=r"'fix' on chain 'case:C-0001': body"):
        record.commit(batch, T0 + 11)
    assert [f["seq"] for f in record.track("T-1001", 0)] == [1]
    assert record.checkpoints() == {"T-1001": b"one"}
    assert record.outbox_depth() == 0
    record.commit(Batch([fix(2)], [], {}), T0 + 12)
    assert record.verify() == []


def test_two_writers_on_one_chain_never_fork(backend: Backend, record: Record) -> None:
    other = Record.open(backend.url)
    errors: list[BaseException] = []

    def write(rec: Record, base: int) -> None:
        try:
            for n in range(15):
                rec.commit(Batch([fix(base + n * 10 + k) for k in range(5)], [], {}), T0)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(rec, base))
               for rec, base in ((record, 0), (other, 1000))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    other.close()
    assert errors == []
    assert len(record.track("T-1001", 0)) == 150
    assert record.verify() == []


# --- append-only and tamper evidence ------------------------------------------------------


def test_triggers_refuse_update_and_delete(backend: Backend, record: Record) -> None:
    record.commit(Batch([fix(1)], [], {}), T0)
    error = sqlite3.Error if backend.kind == "sqlite" else psycopg.Error
    with pytest.raises(error, match="append-only"):
        backend.raw("UPDATE entries SET body = '{}' WHERE seq = 1")
    with pytest.raises(error, match="append-only"):
        backend.raw("DELETE FROM entries")
    if backend.kind == "postgresql":
        with pytest.raises(error, match="append-only"):
            backend.raw("TRUNCATE entries")
    assert record.verify() == []


def test_verify_names_an_edited_body(backend: Backend, record: Record) -> None:
    five_fixes(record)
    backend.drop_guards()
    backend.raw("UPDATE entries SET body = replace(body, '51.5003', '51.6003') WHERE seq = 3")
    assert found(record) == {(3, "altered")}


def test_verify_names_a_deleted_row(backend: Backend, record: Record) -> None:
    five_fixes(record)
    backend.drop_guards()
    backend.raw("DELETE FROM entries WHERE seq = 3")
    assert found(record) == {(3, "removed")}


def test_verify_names_swapped_bodies(backend: Backend, record: Record) -> None:
    five_fixes(record)
    backend.drop_guards()
    bodies = dict(backend.raw("SELECT seq, body FROM entries WHERE seq IN (3, 4)"))
    for seq, other in ((3, 4), (4, 3)):
        text = bodies[other].replace("'", "''")
        backend.raw(f"UPDATE entries SET body = '{text}' WHERE seq = {seq}")
    problems = record.verify(CHAIN)
    assert {(p.seq, p.what) for p in problems} == {(3, "reordered"), (4, "reordered")}
    assert "exchanged body" in problems[0].detail


def test_verify_names_swapped_seq(backend: Backend, record: Record) -> None:
    five_fixes(record)
    backend.drop_guards()
    backend.raw("UPDATE entries SET seq = -1 WHERE seq = 3")
    backend.raw("UPDATE entries SET seq = 3 WHERE seq = 4")
    backend.raw("UPDATE entries SET seq = 4 WHERE seq = -1")
    assert found(record) == {(3, "reordered"), (4, "reordered")}


def test_verify_names_a_truncated_tail(backend: Backend, record: Record) -> None:
    five_fixes(record)
    backend.drop_guards()
    backend.raw("DELETE FROM entries WHERE seq >= 4")
    assert found(record) == {(4, "truncated")}


def test_verify_checks_each_chain_apart(backend: Backend, record: Record) -> None:
    five_fixes(record)
    record.commit(Batch([fix(1, chain="case:C-0002"), Entry("system", "note", {})], [], {}), T0)
    backend.drop_guards()
    backend.raw("DELETE FROM entries WHERE chain = 'case:C-0002'")
    assert record.verify(CHAIN) == []
    assert [(p.chain, p.seq, p.what) for p in record.verify()] == [
        ("case:C-0002", 1, "truncated")]


# --- schema ----------------------------------------------------------------------------


def test_reopening_applies_no_migration(backend: Backend, record: Record) -> None:
    assert record.migrations_applied == [1, 2, 3]
    again = Record.open(backend.url)
    assert again.migrations_applied == []
    again.close()


def test_a_newer_schema_is_refused(backend: Backend, record: Record) -> None:
    backend.raw("INSERT INTO schema_version (version, applied_at) VALUES (99, 0)")
    with pytest.raises(RecordError, match="schema_version is 99, newer than this tagwatch"):
        Record.open(backend.url)


def test_sqlite_memory_and_bad_urls() -> None:
    rec = Record.open("sqlite:///:memory:")
    rec.commit(Batch([fix(1)], [], {}), T0)
    assert rec.verify() == []
    rec.close()
    with pytest.raises(RecordError, match=r"expected sqlite:///absolute/path\.db"):
        Record.open("sqlite://relative.db")
    with pytest.raises(RecordError, match=r"'mysql://u:\*\*\*@h/db'"):
        Record.open("mysql://u:secret@h/db")


# --- outbox ----------------------------------------------------------------------------


def test_outbox_lifecycle(record: Record) -> None:
    items = [OutboxItem("a1", "sms", "+447700900123", {"n": 1}, T0),
             OutboxItem("a1", "call", "+447700900123", {"n": 2}, T0 + 60),
             OutboxItem("a1", "police_webhook", "https://police.test/", {"n": 3}, T0)]
    record.commit(Batch([alert("a1", "open", 1)], items, {}), T0)
    due = record.outbox_due(T0)
    assert [(r.channel, r.body) for r in due] == [("sms", {"n": 1}), ("police_webhook",
                                                                       {"n": 3})]
    sms, police = due
    record.outbox_done(sms.id, {"sid": "SM1"})
    record.outbox_retry(police.id, T0 + 30, "HTTP 503")
    assert [r.channel for r in record.outbox_due(T0 + 29)] == []
    retried = record.outbox_due(T0 + 60)
    assert [(r.channel, r.attempts, r.last_error) for r in retried] == [
        ("police_webhook", 1, "HTTP 503"), ("call", 0, None)]
    record.outbox_failed(police.id, "HTTP 410")
    assert [r.channel for r in record.outbox_due(T0 + 60)] == ["call"]
    assert record.outbox_depth() == 1
    with pytest.raises(RecordError, match="outbox row 999: no such row"):
        record.outbox_done(999, {})


# --- export ----------------------------------------------------------------------------


def test_export_bundle_and_manifest(record: Record, tmp_path: Path) -> None:
    record.commit(Batch([fix(i) for i in range(1, 6)] + [alert("a1", "open", 3)], [], {}),
                  T0 + 10)
    record.commit(Batch([alert("a1", "resolved", 5), fix(9), fix(2, chain="case:C-0002")],
                        [], {}), T0 + 11)
    out = record.export("C-0001", T0 + 2, T0 + 5, tmp_path / "bundle")

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["case"] == "C-0001"
    assert manifest["verify"] == []
    for name in ("fixes.geojson", "alerts.jsonl", "chain.jsonl"):
        assert manifest["sha256"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    fixes = json.loads((out / "fixes.geojson").read_text())
    assert [f["properties"]["seq"] for f in fixes["features"]] == [2, 3, 4, 5]
    assert fixes["features"][0]["geometry"] == {"type": "Point",
                                                "coordinates": [-0.12, 51.5002]}
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert [a["state"] for a in alerts] == ["open", "resolved"]
    lines = [json.loads(line) for line in (out / "chain.jsonl").read_text().splitlines()]
    entries, head = lines[:-1], lines[-1]
    assert [e["seq"] for e in entries] == [2, 3, 4, 5, 6, 7]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))
    for e in entries:  # the bundle alone is enough to recompute every hash (rule 2)
        assert e["hash_rule"] == 2
        assert hashlib.sha256(e["body"].encode()).hexdigest() == e["body_hash"]
        envelope = json.dumps([e[k] for k in ("chain", "seq", "kind", "tag", "event_ts",
                                              "alert_id", "recorded_at", "body_hash")],
                              separators=(",", ":"), ensure_ascii=False)
        text = f"{e['prev_hash']}{envelope}"
        assert hashlib.sha256(text.encode()).hexdigest() == e["hash"]
    assert head["head"]["seq"] == 8


# --- outages (PostgreSQL) ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_commit_after_the_backend_is_killed_reconnects(backend: Backend, record: Record) -> None:
    record.commit(Batch([fix(1)], [], {}), T0)
    killed = backend.raw(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE application_name = '{backend.app}' AND pid <> pg_backend_pid()")
    assert killed == [(True,)]
    with pytest.raises(RecordUnavailable):
        record.commit(Batch([fix(2)], [], {}), T0 + 1)
    record.commit(Batch([fix(2)], [], {}), T0 + 1)
    assert [f["seq"] for f in record.track("T-1001", 0)] == [1, 2]
    assert record.verify() == []


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("refusal", [
    "REVOKE INSERT ON fix_places FROM {role}",
    "ALTER ROLE {role} SET default_transaction_read_only = on",
])
def test_writes_refused_to_the_role_are_an_outage_not_a_data_error(
        backend: Backend, refusal: str) -> None:
    """Permission denied and a read-only transaction refuse every write, whatever it holds,
    until an operator acts: an outage (RecordUnavailable: the daemon holds the batch and
    retries), not the batch's own data (RecordError: the daemon splits the batch)."""
    with shipped_role(backend) as (role, url):
        backend.raw(refusal.format(role=role))
        record = Record.open(url)
        try:
            with pytest.raises(RecordUnavailable,
                               match=r"permission denied|read-only transaction"):
                record.commit(Batch([fix(1)], [], {}), T0)
        finally:
            record.close()


def test_unreachable_postgres_is_unavailable_not_obscure() -> None:
    with pytest.raises(RecordUnavailable, match=r"postgresql://u:\*\*\*@127.0.0.1:1/x"):
        Record.open("postgresql://u:secret@127.0.0.1:1/x?connect_timeout=2")


def test_many_outbox_rows_are_marked_done_in_one_call(record: Record) -> None:
    items = [OutboxItem(f"a{i}", "mqtt", "topic", {"n": i}, T0) for i in range(3)]
    record.commit(Batch([], items, {}), recorded_at=T0)
    due = record.outbox_due(T0 + 1)
    record.outbox_done_many([row.id for row in due[:2]], {"published": True})
    assert record.outbox_depth() == 1
    assert [row.alert_id for row in record.outbox_due(T0 + 1)] == ["a2"]
    record.outbox_done_many([], {"published": True})  # nothing to do is fine
