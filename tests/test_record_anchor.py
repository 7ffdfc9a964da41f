"""Chain heads anchored outside the database (issue 16 item 10), on SQLite and PostgreSQL.

The attack: someone who can write the database (here: drops the append-only triggers as
the owner) rewrites an entry, re-hashes the rest of its chain and updates chain_heads.
The chain is then consistent with itself, so the chain check alone says intact; the
signed anchors, written where that someone cannot write, find it and name the entries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tagwatch import cli
from tagwatch.record import Batch, Entry, Record
from tagwatch.record.anchor import AnchorWriter, anchor_once, check
from tagwatch.record.canon import GENESIS, body_digest, entry_hash_v2
from tests.record_db import RecordDb, record_database, shipped_role

T0 = 1_764_324_930.0
CHAIN = "case:C-0001"
OTHER = "case:C-0002"
KEY = b"k" * 40


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordDb]:
    with record_database(request.param, tmp_path) as db:
        yield db


@pytest.fixture
def record(backend: RecordDb) -> Iterator[Record]:
    rec = Record.open(backend.url)
    yield rec
    rec.close()


def fix(i: int, chain: str = CHAIN) -> Entry:
    body = {"tag": "T-1001", "ts": T0 + i, "lat": 51.5 + i * 1e-4, "lon": -0.12}
    return Entry(chain, "fix", body, tag="T-1001", event_ts=T0 + i)


def fill(record: Record, writer: AnchorWriter, first: int, last: int) -> None:
    for i in range(first, last + 1):
        record.commit(Batch([fix(i), fix(i, OTHER)]), T0 + 100 + i)
    anchor_once(writer, record.read, T0 + 100 + last)


def rehash(db: RecordDb, chain: str, seq_from: int) -> None:
    """Recompute every hash from seq_from on and the head: what the attacker does."""
    rows = db.raw(f"SELECT seq, kind, tag, event_ts, alert_id, recorded_at, body, prev_hash "
                  f"FROM entries WHERE chain = '{chain}' ORDER BY seq")
    prev = GENESIS
    for seq, kind, tag, event_ts, alert_id, recorded_at, body, _old_prev in rows:
        if seq < seq_from:
            prev = db.raw(f"SELECT hash FROM entries WHERE chain = '{chain}' "
                          f"AND seq = {seq}")[0][0]
            continue
        body_hash = body_digest(body)
        digest = entry_hash_v2(prev, chain, seq, kind, tag, event_ts, alert_id, recorded_at,
                               body_hash)
        db.raw(f"UPDATE entries SET prev_hash = '{prev}', hash = '{digest}', "
               f"body_hash = '{body_hash}' WHERE chain = '{chain}' AND seq = {seq}")
        prev = digest
    last = rows[-1][0] if rows else 0
    db.raw(f"UPDATE chain_heads SET seq = {last}, hash = '{prev}' WHERE chain = '{chain}'")


def anchored(record: Record, path: Path):
    return record.read(lambda db: check(db, path, KEY))


def test_rewrite_and_rehash_is_invisible_to_the_chain_but_found_by_the_anchors(
        record: Record, backend: RecordDb, tmp_path: Path) -> None:
    writer = AnchorWriter(tmp_path / "anchors.jsonl", KEY)
    fill(record, writer, 1, 5)
    fill(record, writer, 6, 10)
    clean = anchored(record, writer.path)
    assert clean.problems == [] and clean.checkpoints == 2

    backend.drop_guards()
    backend.raw(f"UPDATE entries SET body = replace(body, '51.5007', '51.6007') "
                f"WHERE chain = '{CHAIN}' AND seq = 7")
    rehash(backend, CHAIN, 7)
    assert record.verify() == []  # the chain alone is fooled

    report = anchored(record, writer.path)
    [problem] = report.problems
    assert (problem.chain, problem.seq, problem.what) == (CHAIN, 6, "rewritten")
    assert "seq 6..10" in problem.detail and "seq 5 still matches" in problem.detail


def test_reordered_entries_are_found_and_the_other_chain_is_untouched(
        record: Record, backend: RecordDb, tmp_path: Path) -> None:
    writer = AnchorWriter(tmp_path / "anchors.jsonl", KEY)
    fill(record, writer, 1, 4)
    backend.drop_guards()
    a, b = backend.raw(f"SELECT id, body FROM entries WHERE chain = '{CHAIN}' "
                       "AND seq IN (2, 3) ORDER BY seq")
    backend.raw(f"UPDATE entries SET body = '{b[1]}' WHERE id = {a[0]}")
    backend.raw(f"UPDATE entries SET body = '{a[1]}' WHERE id = {b[0]}")
    rehash(backend, CHAIN, 2)
    assert record.verify() == []
    [problem] = anchored(record, writer.path).problems
    assert (problem.chain, problem.seq, problem.what) == (CHAIN, 1, "rewritten")
    assert "seq 1..4" in problem.detail


def test_removed_entries_and_a_removed_chain_are_found(
        record: Record, backend: RecordDb, tmp_path: Path) -> None:
    writer = AnchorWriter(tmp_path / "anchors.jsonl", KEY)
    fill(record, writer, 1, 6)
    backend.drop_guards()
    backend.raw(f"DELETE FROM entries WHERE chain = '{CHAIN}' AND seq >= 5")
    rehash(backend, CHAIN, 5)  # the head back to seq 4
    backend.raw(f"DELETE FROM entries WHERE chain = '{OTHER}'")
    backend.raw(f"DELETE FROM chain_heads WHERE chain = '{OTHER}'")
    assert record.verify() == []
    found = {(p.chain, p.seq, p.what) for p in anchored(record, writer.path).problems}
    assert found == {(CHAIN, 5, "removed"), (OTHER, 1, "removed")}


def test_what_the_anchors_do_not_cover_is_said(record: Record, tmp_path: Path) -> None:
    writer = AnchorWriter(tmp_path / "anchors.jsonl", KEY)
    fill(record, writer, 1, 3)
    record.commit(Batch([fix(4), Entry("case:C-0003", "fix", {"lat": 1}, "T-9", T0)]), T0)
    report = anchored(record, writer.path)
    assert report.problems == []
    assert any(f"{CHAIN}: seq 4..4 written after its latest anchor" in n for n in report.notes)
    assert any("case:C-0003: seq 1..1: no anchor covers" in n for n in report.notes)


def test_a_forged_or_removed_checkpoint_line_is_found(record: Record, tmp_path: Path) -> None:
    path = tmp_path / "anchors.jsonl"
    writer = AnchorWriter(path, KEY)
    for last in (2, 4, 6):
        fill(record, writer, last - 1, last)
    lines = path.read_text().splitlines(keepends=True)
    forged = json.loads(lines[2])
    forged["heads"][CHAIN][0] = 5
    path.write_text(lines[0] + json.dumps(forged) + "\n")
    problems = anchored(record, path).problems
    assert [(p.seq, p.what) for p in problems] == [(2, "altered")]
    path.write_text(lines[0] + lines[2])  # the middle checkpoint taken out
    problems = anchored(record, path).problems
    assert [(p.seq, p.what) for p in problems] == [(2, "removed")]


def test_a_restarted_writer_continues_the_signed_sequence(record: Record, tmp_path: Path
                                                         ) -> None:
    path = tmp_path / "anchors.jsonl"
    fill(record, AnchorWriter(path, KEY), 1, 2)
    with path.open("ab") as fp:
        fp.write(b'{"v": 1, "n": 2, "hea')  # a write cut short by a crash
    second = AnchorWriter(path, KEY)
    fill(record, second, 3, 4)
    assert second.n == 2
    os.chmod(path, 0o600)
    report = anchored(record, path)
    assert report.problems == [] and report.checkpoints == 2
    assert any("unreadable" in n for n in report.notes)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# --------------------------------------------------------------------------- the command


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("TAGWATCH_") and not name.startswith("TAGWATCH_TEST_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_verify_command_names_the_rewrite_and_says_what_it_cannot_prove_without_a_key(
        record: Record, backend: RecordDb, tmp_path: Path, env: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "anchors.jsonl"
    writer = AnchorWriter(path, KEY)
    fill(record, writer, 1, 5)
    env.setenv("TAGWATCH_RECORD_URL", backend.url)
    env.setenv("TAGWATCH_RECORD_ANCHOR_PATH", str(path))
    env.setenv("TAGWATCH_ANCHOR_KEY", KEY.decode())
    assert cli.main(["record", "verify"]) == 0
    assert "every anchored head matches" in capsys.readouterr().out

    backend.drop_guards()
    backend.raw(f"UPDATE entries SET body = replace(body, '51.5003', '51.6003') "
                f"WHERE chain = '{CHAIN}' AND seq = 3")
    rehash(backend, CHAIN, 3)
    assert cli.main(["record", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"{CHAIN}\tseq 1\trewritten\tseq 1..5:" in out

    env.delenv("TAGWATCH_ANCHOR_KEY")
    env.delenv("TAGWATCH_RECORD_ANCHOR_PATH")
    assert cli.main(["record", "verify"]) == 0
    out = capsys.readouterr().out
    assert "not proven against anchors: no anchor key (TAGWATCH_ANCHOR_KEY" in out
    assert "could rewrite an entry and re-hash the rest" in out

    env.setenv("TAGWATCH_ANCHOR_KEY", "w" * 40)  # another key: nothing it signed
    assert cli.main(["record", "verify", "--anchors", str(path)]) == 1
    assert "signed with another key" in capsys.readouterr().out


def test_anchor_path_without_a_key_is_a_configuration_error(
        env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env.setenv("TAGWATCH_RECORD_URL", f"sqlite://{tmp_path}/r.db")
    env.setenv("TAGWATCH_RECORD_ANCHOR_PATH", str(tmp_path / "a.jsonl"))
    assert cli.main(["record", "verify"]) == 2
    assert "TAGWATCH_ANCHOR_KEY" in capsys.readouterr().err
    env.setenv("TAGWATCH_ANCHOR_KEY", "short")
    assert cli.main(["record", "verify"]) == 2
    assert "at least 32 bytes" in capsys.readouterr().err


# --------------------------------------------------------------------------- the role


@pytest.fixture
def app_role(tmp_path: Path) -> Iterator[tuple[RecordDb, str]]:
    """A PostgreSQL record owned by the test's superuser, and the URL of a role made by
    the shipped deploy/postgres/roles.sql."""
    with record_database("postgresql", tmp_path) as db, shipped_role(db) as (_role, url):
        yield db, url


def test_the_shipped_role_appends_and_purges_but_cannot_rewrite(
        app_role: tuple[RecordDb, str]) -> None:
    _db, url = app_role
    record = Record.open(url)
    try:
        for i in range(1, 4):
            record.commit(Batch([fix(i)], checkpoints={"T-1001": b"x"}), T0 + 100 + i)
        report = record.purge(T0 + 2.5, 0.0, T0 + 200)
        assert report.purged == 2
        assert record.verify() == []
    finally:
        record.close()
    with psycopg.connect(url, autocommit=True) as app:
        for attack in (
            "UPDATE entries SET kind = 'x' WHERE seq = 3",
            "DELETE FROM entries WHERE seq = 3",
            "TRUNCATE entries",
            "ALTER TABLE entries DISABLE TRIGGER entries_append_only",
            "DROP TRIGGER entries_append_only ON entries",
            "SET session_replication_role = replica",
        ):
            with pytest.raises(psycopg.Error, match=r"permission denied|must be owner"):
                app.execute(attack.encode())
        # what only the trigger stops (the role may UPDATE body, for purges)
        with pytest.raises(psycopg.Error, match="append-only"):
            app.execute(b"UPDATE entries SET body = '{}' WHERE seq = 3")

