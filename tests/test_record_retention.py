"""Data retention: purging old fix bodies keeps alert evidence and the hash chain verifiable.

SQLite always, PostgreSQL when TAGWATCH_TEST_POSTGRES is set (fixtures from test_record).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tagwatch.record import Batch, Entry, Record, RecordError, schema
from tests import test_record as base
from tests.test_record import CHAIN, T0, Backend, alert

backend = base.backend  # the fixtures: SQLite, and PostgreSQL when configured
record = base.record

HOUR = 3600.0
OTHER = "case:C-0002"
# The last commit whose record wrote schema 1 (hash rule 1): the real old code path.
SCHEMA1_COMMIT = "28f4f12f5d47f6c2e5cf8ccb352dd1f760f742d2"
REPO = Path(__file__).resolve().parents[1]


def hourly_fix(hour: int, chain: str = CHAIN) -> Entry:
    ts = T0 + hour * HOUR
    body = {"tag": "T-1001", "ts": ts, "lat": 51.5 + hour * 1e-4, "lon": -0.12, "seq": hour}
    return Entry(chain, "fix", body, tag="T-1001", event_ts=ts)


def hourly_alert(alert_id: str, state: str, hour: int) -> Entry:
    entry = alert(alert_id, state, 0)
    body = {**entry.body, "ts": T0 + hour * HOUR}
    return Entry(CHAIN, "alert", body, tag="T-1001", event_ts=T0 + hour * HOUR, alert_id=alert_id)


def scenario(record: Record) -> None:
    """Fixes at hours 0..99 (seq 1..100), an alert open at hour 50 and resolved at 52
    (seq 101, 102); on another case's chain, fixes at hours 0..9 and no alert."""
    record.commit(Batch([hourly_fix(h) for h in range(100)]), T0 + 100 * HOUR)
    record.commit(
        Batch([hourly_alert("a1", "open", 50), hourly_alert("a1", "resolved", 52)]), T0 + 100 * HOUR
    )
    record.commit(Batch([hourly_fix(h, OTHER) for h in range(10)]), T0 + 100 * HOUR)


def purge(record: Record) -> None:
    """Older than hour 80, evidence window 5 h: keeps hours 45..57 and 80..99 on CHAIN."""
    record.purge(T0 + 80 * HOUR, 5 * HOUR, T0 + 200 * HOUR)


def rows(backend: Backend, where: str) -> list[tuple]:
    return backend.raw(
        f"SELECT seq, kind, body, body_hash, hash_rule FROM entries "
        f"WHERE {where} ORDER BY chain, seq"
    )


def found(record: Record) -> set[tuple[str, int, str]]:
    return {(p.chain, p.seq, p.what) for p in record.verify()}


def db_error(backend: Backend) -> type[Exception]:
    return sqlite3.Error if backend.kind == "sqlite" else psycopg.Error


# --- purge -----------------------------------------------------------------------------


def test_purge_keeps_alert_evidence_and_purges_the_rest(backend: Backend, record: Record) -> None:
    scenario(record)
    report = record.purge(T0 + 80 * HOUR, 5 * HOUR, T0 + 200 * HOUR)

    main, other = report.chains[CHAIN], report.chains[OTHER]
    assert (main.purged, main.kept_in_window, main.legacy_kept) == (45 + 22, 13, 0)
    assert (main.first_seq, main.last_seq, main.purge_seq) == (1, 80, 103)
    assert (other.purged, other.first_seq, other.last_seq, other.purge_seq) == (10, 1, 10, 11)
    assert report.purged == 77
    kept = [f["seq"] for f in record.track("T-1001", 0) if f["ts"] < T0 + 100 * HOUR]
    assert kept == [*range(45, 58), *range(80, 100)]
    purged_seqs = [r[0] for r in rows(backend, f"chain = '{CHAIN}' AND body IS NULL")]
    assert purged_seqs == [*range(1, 46), *range(59, 81)]
    assert all(r[3] for r in rows(backend, "body IS NULL"))  # body_hash kept
    assert rows(backend, "kind = 'alert' AND body IS NULL") == []


def test_the_purge_is_an_entry_in_the_chain(backend: Backend, record: Record) -> None:
    scenario(record)
    purge(record)
    ((seq, _kind, body, _hash, rule),) = rows(backend, f"chain = '{CHAIN}' AND kind = 'purge'")
    assert (seq, rule) == (103, 2)
    assert json.loads(body) == {
        "older_than": T0 + 80 * HOUR,
        "keep_window_s": 5 * HOUR,
        "purged": 67,
        "first_seq": 1,
        "last_seq": 80,
        "ranges": [[1, 45], [59, 80]],
    }
    head = backend.raw(f"SELECT seq FROM chain_heads WHERE chain = '{CHAIN}'")
    assert head == [(103,)]
    again = record.purge(T0 + 80 * HOUR, 5 * HOUR, T0 + 201 * HOUR)
    assert (again.purged, again.kept_in_window, list(again.chains)) == (0, 13, [CHAIN])
    assert again.chains[CHAIN].purge_seq == 0
    assert len(rows(backend, "kind = 'purge'")) == 2  # one per affected chain, once


def test_verify_is_intact_after_a_purge_and_counts_purged(record: Record) -> None:
    scenario(record)
    purge(record)
    report = record.verify_report()
    assert report.problems == []
    assert report.purged == {CHAIN: 67, OTHER: 10}
    assert record.verify() == []
    record.commit(Batch([hourly_fix(100)]), T0 + 201 * HOUR)  # the chain goes on
    assert record.verify() == []


def test_export_shows_purged_fixes_as_null_geometry(record: Record, tmp_path: Path) -> None:
    scenario(record)
    purge(record)
    out = record.export("C-0001", T0 + 40 * HOUR, T0 + 60 * HOUR, tmp_path / "b")
    features = json.loads((out / "fixes.geojson").read_text())["features"]
    assert [f["geometry"] is None for f in features] == [True] * 5 + [False] * 13 + [True] * 3
    assert features[0]["properties"] == {
        "purged": True,
        "record_seq": 41,
        "tag": "T-1001",
        "ts": T0 + 40 * HOUR,
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verify"] == []
    assert manifest["purged"] == {"fixes_in_range": 8, "chain": 67}
    lines = [json.loads(x) for x in (out / "chain.jsonl").read_text().splitlines()[:-1]]
    assert [x["body"] is None for x in lines[:1]] == [True]


def test_purge_refuses_bad_arguments(record: Record) -> None:
    with pytest.raises(RecordError, match=r"older_than .* is after now"):
        record.purge(T0 + 10, HOUR, T0)
    with pytest.raises(RecordError, match="keep_window_s: must be >= 0"):
        record.purge(T0, -1, T0)
    with pytest.raises(RecordError, match="now: not a finite number"):
        record.purge(T0, HOUR, float("nan"))


# --- tamper evidence after a purge -----------------------------------------------------------


def test_a_tampered_entry_is_still_detected_after_a_purge(backend: Backend, record: Record) -> None:
    scenario(record)
    purge(record)
    backend.drop_guards()
    backend.raw(
        f"UPDATE entries SET body = replace(body, '51.5', '51.6') "
        f"WHERE chain = '{CHAIN}' AND seq = 50"
    )  # a kept fix
    backend.raw(f"UPDATE entries SET tag = 'T-9999' WHERE chain = '{CHAIN}' AND seq = 10")
    assert found(record) == {(CHAIN, 50, "altered"), (CHAIN, 10, "altered")}


def test_an_edited_purged_entry_is_detected(backend: Backend, record: Record) -> None:
    scenario(record)
    purge(record)
    backend.drop_guards()
    fake = hashlib.sha256(b'{"lat":0}').hexdigest()
    backend.raw(f"UPDATE entries SET body_hash = '{fake}' WHERE chain = '{CHAIN}' AND seq = 7")
    backend.raw(f"UPDATE entries SET body = '{{\"lat\":0}}' WHERE chain = '{CHAIN}' AND seq = 8")
    assert found(record) == {(CHAIN, 7, "altered"), (CHAIN, 8, "altered")}


def test_a_body_removed_without_a_purge_entry_is_detected(backend: Backend, record: Record) -> None:
    scenario(record)
    purge(record)
    # the trigger allows this UPDATE (it cannot tell who runs it), but no purge entry
    # accounts for it: verify names it
    backend.raw(f"UPDATE entries SET body = NULL WHERE chain = '{CHAIN}' AND seq IN (50, 51)")
    problems = record.verify()
    assert [(p.chain, p.seq, p.what) for p in problems] == [(CHAIN, 50, "altered")]
    assert "seq 50..51 is missing and no purge entry records" in problems[0].detail


# --- the triggers ------------------------------------------------------------------------


def test_the_triggers_allow_only_the_purge(backend: Backend, record: Record) -> None:
    scenario(record)
    error = db_error(backend)
    refused = [
        "UPDATE entries SET body = '{}' WHERE seq = 1",
        "UPDATE entries SET body = NULL, tag = 'T-9' WHERE seq = 1",
        "UPDATE entries SET body_hash = 'x' WHERE seq = 1",
        "UPDATE entries SET hash_rule = 1 WHERE seq = 1",
        f"UPDATE entries SET body = NULL WHERE chain = '{CHAIN}' AND kind = 'alert'",
        "DELETE FROM entries WHERE seq = 1",
    ]
    for sql in refused:
        with pytest.raises(error, match="append-only"):
            backend.raw(sql)
    assert rows(backend, "body IS NULL") == []
    backend.raw(f"UPDATE entries SET body = NULL WHERE chain = '{CHAIN}' AND seq = 1")
    assert [r[0] for r in rows(backend, "body IS NULL")] == [1]
    with pytest.raises(error, match="append-only"):
        backend.raw(f"UPDATE entries SET body = '{{}}' WHERE chain = '{CHAIN}' AND seq = 1")


# --- entries written before schema 2 --------------------------------------------------------


def _rule1_hash(prev: str, row: list) -> str:
    text = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev.encode() + text.encode()).hexdigest()


def _write_schema1_by_hand(backend: Backend, count: int) -> None:
    """What schema-1 tagwatch wrote: rule-1 hashes (the definition test_record checks)."""
    prev = "0" * 64
    for seq in range(1, count + 1):
        entry = hourly_fix(seq - 1)
        body = json.dumps(entry.body, sort_keys=True, separators=(",", ":"))
        at = T0 + 100 * HOUR
        digest = _rule1_hash(
            prev, [CHAIN, seq, "fix", "T-1001", entry.event_ts, None, at, entry.body]
        )
        backend.raw(
            "INSERT INTO entries (chain, seq, kind, tag, event_ts, alert_id, recorded_at, "
            f"body, prev_hash, hash) VALUES ('{CHAIN}', {seq}, 'fix', 'T-1001', "
            f"{entry.event_ts!r}, NULL, {at!r}, '{body}', '{prev}', '{digest}')"
        )
        prev = digest
    backend.raw(f"INSERT INTO chain_heads VALUES ('{CHAIN}', {count}, '{prev}')")


def _write_schema1_with_committed_code(backend: Backend, tmp_path: Path, count: int) -> None:
    """Run the record as committed at SCHEMA1_COMMIT, in a separate interpreter."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and the repository history for the schema-1 code")
    old = tmp_path / "schema1"
    old.mkdir()
    archive = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "archive",
            SCHEMA1_COMMIT,
            "tagwatch/__init__.py",
            "tagwatch/record",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True, timeout=30)
    script = (
        "import sys\n"
        "from tagwatch.record import Batch, Entry, Record\n"
        "assert Record.__module__.startswith('tagwatch.record')\n"
        "import tagwatch; assert tagwatch.__file__.startswith(sys.argv[2]), tagwatch.__file__\n"
        "rec = Record.open(sys.argv[1])\n"
        f"for h in range({count}):\n"
        f"    ts = {T0!r} + h * {HOUR!r}\n"
        "    body = {'tag': 'T-1001', 'ts': ts, 'lat': 51.5 + h * 1e-4, 'lon': -0.12, 'seq': h}\n"
        f"    e = Entry({CHAIN!r}, 'fix', body, tag='T-1001', event_ts=ts)\n"
        f"    rec.commit(Batch([e], [], {{}}), {T0 + 100 * HOUR!r})\n"
        "rec.close()\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, backend.url, str(old)], cwd=old, check=True, timeout=60
    )


@pytest.mark.parametrize("writer", ["committed_code", "by_hand"])
def test_entries_written_before_the_migration_still_verify(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    if writer == "committed_code":
        _write_schema1_with_committed_code(backend, tmp_path, 60)
    else:
        with monkeypatch.context() as patch:
            patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
            Record.open(backend.url).close()
        _write_schema1_by_hand(backend, 60)
    before = backend.raw("SELECT seq, hash FROM entries ORDER BY seq")

    rec = Record.open(backend.url)
    try:
        assert rec.migrations_applied == [2, 3]
        assert backend.raw("SELECT seq, hash FROM entries ORDER BY seq") == before
        assert rec.verify() == []
        rec.commit(Batch([hourly_fix(h) for h in range(60, 100)]), T0 + 100 * HOUR)
        rec.commit(Batch([hourly_alert("a1", "open", 70)]), T0 + 100 * HOUR)
        assert {r[4] for r in rows(backend, "seq <= 60")} == {1}
        assert {r[4] for r in rows(backend, "seq > 60")} == {2}
        assert rec.verify() == []

        report = rec.purge(T0 + 90 * HOUR, 5 * HOUR, T0 + 200 * HOUR)
        part = report.chains[CHAIN]
        # hours 0..59: rule 1, kept; 60..64 and 76..89 purged; 65..75 evidence of a1
        assert (part.legacy_kept, part.purged, part.kept_in_window) == (60, 5 + 14, 11)
        assert rec.verify_report().purged == {CHAIN: 19}
        assert rec.verify() == []

        backend.drop_guards()
        backend.raw("UPDATE entries SET body = replace(body, '51.5', '51.7') WHERE seq = 30")
        assert found(rec) == {(CHAIN, 30, "altered")}
    finally:
        rec.close()
