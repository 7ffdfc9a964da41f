"""A case record's database for one test: SQLite in tmp_path, or PostgreSQL in a schema
of its own, dropped afterwards. PostgreSQL is TAGWATCH_TEST_POSTGRES when set (set empty
to turn the PostgreSQL tests off), else postgresql://postgres@127.0.0.1:5432/test when
that port answers (the README's test command then runs them).

`raw` reaches the database behind the record's back, as an attacker or an operator
could: the tamper tests use it. `shipped_role` gives a PostgreSQL record the role tagwatch
runs as in production (deploy/postgres/roles.sql).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from tagwatch.record import Record

ROLES_SQL = Path(__file__).parent.parent / "deploy" / "postgres" / "roles.sql"

LOCAL_PG = ("127.0.0.1", 5432)
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url(environ: Mapping[str, str], address: tuple[str, int] = LOCAL_PG) -> str:
    """TAGWATCH_TEST_POSTGRES when it is set (set empty: no PostgreSQL tests); else the
    `test` database of the server at `address` when it answers; else none."""
    if "TAGWATCH_TEST_POSTGRES" in environ:
        return environ["TAGWATCH_TEST_POSTGRES"]
    with socket.socket() as probe:
        probe.settimeout(1.0)
        if probe.connect_ex(address) != 0:
            return ""
    return f"postgresql://postgres@{address[0]}:{address[1]}/test"


PG_URL = postgres_url(os.environ)


@dataclass
class RecordDb:
    kind: str  # "sqlite" or "postgresql"
    url: str
    schema: str = ""
    app: str = ""  # PostgreSQL application_name of the record's connections

    def raw(self, sql: str) -> list[tuple]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.url.removeprefix("sqlite://"), isolation_level=None)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []

    def drop_guards(self) -> None:
        if self.kind == "sqlite":
            self.raw("DROP TRIGGER entries_no_update")
            self.raw("DROP TRIGGER entries_no_delete")
        else:
            self.raw("DROP TRIGGER entries_append_only ON entries")


@contextmanager
def record_database(kind: str, tmp_path: Path) -> Iterator[RecordDb]:
    """Skips (saying why) when PostgreSQL is asked for and none is configured."""
    if kind == "sqlite":
        yield RecordDb("sqlite", f"sqlite://{tmp_path}/record.db")
        return
    if not PG_URL:
        pytest.skip(
            "PostgreSQL tests need a server: TAGWATCH_TEST_POSTGRES names one, else "
            f"{DEFAULT_PG_URL} is used when 127.0.0.1:5432 answers; "
            + ("TAGWATCH_TEST_POSTGRES is set empty" if "TAGWATCH_TEST_POSTGRES" in os.environ
               else "nothing answers there")
        )
    schema = f"t_{uuid.uuid4().hex[:12]}"
    app = f"tagwatch-test-{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}&application_name={app}"
    try:
        yield RecordDb("postgresql", url, schema, app)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def shipped_role(db: RecordDb) -> Iterator[tuple[str, str]]:
    """(role, its URL): the record's schema created in `db` by the test's superuser (its
    owner), and a role of this test's own made by the shipped deploy/postgres/roles.sql,
    as tagwatch runs in production. The role is dropped afterwards (roles are not in a
    schema: its name is the schema's, so tests running together never share one)."""
    Record.open(db.url).close()
    role = f"tagwatch_app_{db.schema}"
    with psycopg.connect(db.url, autocommit=True) as admin:
        admin.execute(ROLES_SQL.read_text().replace("tagwatch_app", role).encode())
    scheme, rest = db.url.split("://", 1)
    try:
        yield role, f"{scheme}://{role}@{rest.split('@', 1)[1]}"
    finally:
        with psycopg.connect(db.url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}".encode())
            admin.execute(f"DROP ROLE {role}".encode())
