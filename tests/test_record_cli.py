"""The record commands on a record that is not there, and what they write (issues 16, 18).

Reading commands (verify, export, purge, alerts ack) never create a record: a mistyped
SQLite path or a PostgreSQL database without the schema is exit 2, naming the URL
without its password. A record the daemon creates is private (0600); an export is
private too, refuses what it cannot do honestly, and never follows a symlink.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tagwatch import cli
from tagwatch.record import Batch, Entry, Record
from tests.record_db import RecordDb, record_database

T0 = 1_764_324_930.0
PASSWORD = "pw-s3cret-7f1c"

READERS = [
    ["record", "verify"],
    ["record", "export", "--case", "C-0001", "--since", "2025-11-28T00:00:00Z",
     "--until", "2025-11-29T00:00:00Z", "--out", "OUT"],
    ["record", "purge", "--older-than-days", "30"],
    ["alerts", "ack", "a-1", "--by", "tester"],
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("TAGWATCH_") and not name.startswith("TAGWATCH_TEST_"):
            monkeypatch.delenv(name)
    return monkeypatch


def run(env: pytest.MonkeyPatch, url: str, args: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    env.setenv("TAGWATCH_RECORD_URL", url)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_reading_a_missing_sqlite_record_is_an_error_and_creates_nothing(
        env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        args: list[str]) -> None:
    path = tmp_path / "mistyped" / "recrod.db"
    path.parent.mkdir()
    code, out, err = run(env, f"sqlite://{path}", args, tmp_path, capsys)
    assert code == 2, out + err
    assert str(path) in err and "no case record" in err
    assert "intact" not in out
    assert list(path.parent.iterdir()) == []


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[RecordDb]:
    with record_database("postgresql", tmp_path) as db:
        yield db


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_reading_a_postgres_database_without_the_schema_is_an_error_naming_no_password(
        env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        pg: RecordDb, args: list[str]) -> None:
    url = with_password(pg.url)
    code, out, err = run(env, url, args, tmp_path, capsys)
    assert code == 2, out + err
    assert "no case record" in err and "***" in err
    assert PASSWORD not in out + err
    tables = pg.raw(f"SELECT count(*) FROM information_schema.tables "
                    f"WHERE table_schema = '{pg.schema}'")
    assert tables == [(0,)]


def test_reading_an_existing_record_still_works(
        env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite://{tmp_path}/record.db"
    Record.open(url).close()
    code, out, err = run(env, url, ["record", "verify"], tmp_path, capsys)
    assert code == 0 and "every chain intact" in out, err


def test_a_new_sqlite_record_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "record.db"
        record = Record.open(f"sqlite://{path}")
        record.commit(Batch([Entry("case:C-0001", "fix", {"lat": 1}, "T-1", T0)]), T0)
        files = [p for p in tmp_path.iterdir() if p.name.startswith("record.db")]
        assert {p.name for p in files} >= {"record.db", "record.db-wal"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        record.close()
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- export


@pytest.fixture
def filled(env: pytest.MonkeyPatch, tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path}/record.db"
    record = Record.open(url)
    record.commit(Batch([Entry("case:C-0001", "fix", {"lat": 51.5, "lon": -0.1}, "T-1",
                               T0)]), T0)
    record.close()
    env.setenv("TAGWATCH_RECORD_URL", url)
    return url


def export(out: Path, case: str = "C-0001", since: str = "2025-11-28T00:00:00Z",
           until: str = "2025-11-29T00:00:00Z", *extra: str) -> int:
    return cli.main(["record", "export", "--case", case, "--since", since, "--until", until,
                     "--out", str(out), *extra])


def test_export_of_an_unknown_case_is_an_error(
        filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(tmp_path / "b", "C-9999") == 2
    assert "'C-9999': not in the record" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_export_with_since_after_until_is_an_error(
        filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(tmp_path / "b", "C-0001", "2025-11-29T00:00:00Z", "2025-11-28T00:00:00Z") == 2
    assert "--since 2025-11-29T00:00:00Z is after --until" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_export_refuses_a_non_empty_folder_unless_forced(
        filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "notes.txt").write_text("the investigator's own notes")
    assert export(out) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert export(out, "C-0001", "2025-11-28T00:00:00Z", "2025-11-29T00:00:00Z", "--force") == 0
    assert (out / "manifest.json").is_file() and (out / "notes.txt").is_file()


def test_export_writes_private_files_and_never_follows_a_symlink(
        filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "new" / "bundle"
        assert export(out) == 0, capsys.readouterr().err
        for folder in (out, out.parent):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        for name in ("fixes.geojson", "alerts.jsonl", "chain.jsonl", "manifest.json"):
            assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name

        victim = tmp_path / "elsewhere"
        victim.mkdir()
        link = tmp_path / "link"
        link.symlink_to(victim)
        assert export(link, "C-0001", "2025-11-28T00:00:00Z", "2025-11-29T00:00:00Z",
                      "--force") == 2
        assert "symbolic link" in capsys.readouterr().err
        assert list(victim.iterdir()) == []

        target = tmp_path / "precious.txt"
        target.write_text("keep me")
        (out / "chain.jsonl").unlink()
        (out / "chain.jsonl").symlink_to(target)
        assert export(out, "C-0001", "2025-11-28T00:00:00Z", "2025-11-29T00:00:00Z",
                      "--force") == 2
        assert "chain.jsonl: cannot write" in capsys.readouterr().err
        assert target.read_text() == "keep me"
    finally:
        os.umask(old)


def test_record_url_secrets_are_redacted_in_the_logged_config() -> None:
    from tagwatch.config import load_config

    for url in (f"postgresql://tw:{PASSWORD}@db.example:5432/tw",
                f"postgresql://tw@db.example:5432/tw?sslmode=require&password={PASSWORD}"):
        config = load_config(None, {"TAGWATCH_RECORD_URL": url})
        assert PASSWORD not in str(config.redacted()), url
        assert PASSWORD not in str(config), url
