"""SQLite and PostgreSQL behind one small interface, so the record has one code path.

SQL is written once with `?` placeholders; PostgreSQL gets them as `%s`. Driver errors are
translated here, in one place, into RecordUnavailable (retry later) or RecordError.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from tagwatch.record.model import RecordError, RecordMissing, RecordUnavailable

# psycopg is imported by the first PostgresDb, not here: it is about a tenth of
# `tagwatch run`'s start-up, which a SQLite record (and most commands) never needs.
psycopg: Any = None
conninfo_to_dict: Any = None
TransactionStatus: Any = None


def _import_psycopg() -> None:
    global psycopg, conninfo_to_dict, TransactionStatus
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import TransactionStatus

Row = tuple[Any, ...]

# SQLite errors that mean "not now" rather than "never": the caller may retry.
_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open", "full")


def redact_url(url: str) -> str:
    """The URL without its password, for error messages."""
    # Up to the last @ before the path: a password may itself hold an @.
    url = re.sub(r"(://[^:/@?#]*):[^/?#]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


def _secrets(url: str) -> list[str]:
    """The password parts of a URL as written, to scrub from drivers' error texts."""
    found = re.findall(r"://[^:/@?#]*:([^/?#]*)@", url) + re.findall(r"password=([^&\s]*)", url)
    return [s for s in found if s]


def scrub(text: str, url: str) -> str:
    """text with every secret of url replaced by ***."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


class Db:
    """One connection, transactions, statements; subclasses know their driver."""

    dialect: str

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = redact_url(url)

    def has_schema(self) -> bool:
        """Whether the database holds a tagwatch record (its schema_version table)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @contextmanager
    def transaction(self, write: bool, batch: bool = False) -> Iterator[Db]:
        """batch (a write of Record.commit): the driver may send the statements that return
        nothing later, together, as long as they all run in this transaction, in order,
        and the transaction's end reports their errors."""
        raise NotImplementedError
        yield self

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the row count."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def insert_rows(self, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        """Plain bulk insert of many rows (no conflicts expected)."""
        marks = ", ".join("?" * len(columns.split(",")))
        self.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)

    def upsert_rows(
        self,
        table: str,
        key: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """Insert rows or replace those with the same key; columns are (name, pg type)."""
        names = ", ".join(name for name, _ in columns)
        marks = ", ".join("?" * len(columns))
        sets = ", ".join(f"{name} = excluded.{name}" for name, _ in columns if name != key)
        self.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({key}) DO UPDATE SET {sets}",
            rows,
        )

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        raise NotImplementedError

    def script(self, statements: Iterable[str]) -> None:
        """DDL, run without parameters (so a literal % or ? is left alone)."""
        raise NotImplementedError

    def lost_race(self, exc: RecordError) -> bool:
        """Whether a failed transaction appended an entry at a (chain, seq) that another
        writer had taken (or deadlocked with one doing so): redo it with the heads locked."""
        return False

    def lock_known_heads(self, chains: list[str]) -> None:
        """Lock existing chain heads (sorted, as lock_heads) without reading them: the
        caller knows them, and a moved one makes its entries' insert fail."""
        raise NotImplementedError

    def lock_heads(self, chains: list[str], genesis: str) -> dict[str, tuple[int, str]]:
        """Create missing chain heads and lock them all for this transaction.

        `chains` must be sorted, so that writers lock in one order and cannot deadlock.
        """
        raise NotImplementedError


class SqliteDb(Db):
    dialect = "sqlite"

    def __init__(self, url: str, create: bool = True) -> None:
        super().__init__(url)
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise RecordError(f"record url {self.label!r}: expected sqlite:///absolute/path.db")
        self.path = ":memory:" if path == "/:memory:" else path
        target = self.path
        if self.path != ":memory:":
            if create:
                _create_private(self.path, self.label)
            elif not os.path.exists(self.path):
                raise RecordMissing(f"{self.label}: no case record there (no such file)")
            else:
                # mode=rw: never create the file, even if it vanishes meanwhile
                target = "file:" + _quote_path(self.path) + "?mode=rw"
        try:
            self.conn = sqlite3.connect(
                target, check_same_thread=False, isolation_level=None, uri=target != self.path
            )
            # WAL with synchronous=FULL: every commit is fsynced, so a batch whose fixes
            # the daemon then acknowledges to the broker survives a power cut, not only
            # a process crash (NORMAL would be crash-safe but could lose the last
            # commits on power loss). One fsync per micro-batch is cheap.
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:
            raise self._translate(exc, "open") from exc

    def close(self) -> None:
        self.conn.close()

    def has_schema(self) -> bool:
        try:
            rows = self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc, "open") from exc
        return bool(rows)

    def _translate(self, exc: sqlite3.Error, what: str) -> RecordError:
        text = f"{self.label}: {what}: {exc}"
        if isinstance(exc, sqlite3.OperationalError) and any(
            word in str(exc).lower() for word in _SQLITE_TRANSIENT
        ):
            return RecordUnavailable(text)
        return RecordError(text)

    @contextmanager
    def transaction(self, write: bool, batch: bool = False) -> Iterator[Db]:
        try:
            # IMMEDIATE takes the write lock up front: one writer, so no chain can fork,
            # and no deadlock-prone lock upgrade halfway through a batch.
            self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise self._translate(exc, "transaction") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        yield from self.conn.execute(sql, params)

    def script(self, statements: Iterable[str]) -> None:
        for statement in statements:
            self.conn.execute(statement)

    def lock_heads(self, chains: list[str], genesis: str) -> dict[str, tuple[int, str]]:
        # BEGIN IMMEDIATE already holds the only write lock: reading is enough.
        self.conn.executemany(
            "INSERT INTO chain_heads (chain, seq, hash) VALUES (?, 0, ?) "
            "ON CONFLICT (chain) DO NOTHING",
            [(chain, genesis) for chain in chains],
        )
        marks = ",".join("?" * len(chains))
        rows = self.conn.execute(
            f"SELECT chain, seq, hash FROM chain_heads WHERE chain IN ({marks})", chains
        )
        return {chain: (seq, digest) for chain, seq, digest in rows}


# SQLSTATEs that refuse every write whatever it holds, until an operator acts: permission
# denied (a role without INSERT) and read-only transaction (a standby, or a server or role
# set default_transaction_read_only). An outage, not the batch's data: the daemon holds the
# batch and retries; as data errors every batch was split and retried message by message.
_PG_WRITES_REFUSED = ("42501", "25006")

# A batch transaction inserts this many rows or more with COPY (less client CPU per row than
# JSON, docs/POSTGRESQL.md); fewer go as one JSON statement in the transaction's pipeline.
COPY_ROWS = 500


class PostgresDb(Db):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        _import_psycopg()
        super().__init__(url)
        self.conn: psycopg.Connection | None = None
        self._sql: dict[str, str] = {}
        # In a batch transaction: the statements not sent yet (BEGIN first), else None.
        self._queue: list[tuple[Any, Any, bool]] | None = None
        self._connect()

    def _connect(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            extra = (
                {} if "connect_timeout" in conninfo_to_dict(self.url) else {"connect_timeout": 5}
            )
            try:
                self.conn = psycopg.connect(self.url, autocommit=True, **extra)
            except psycopg.Error as exc:
                text = scrub(str(exc), self.url)
                raise RecordUnavailable(f"{self.label}: connect: {text}") from None
        return self.conn

    def has_schema(self) -> bool:
        conn = self._connect()
        try:
            row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        except psycopg.Error as exc:
            raise self._translate(exc, "open") from None
        return bool(row and row[0])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _pg(self, sql: str) -> str:
        converted = self._sql.get(sql)
        if converted is None:
            converted = self._sql[sql] = sql.replace("?", "%s")
        return converted

    def _translate(self, exc: psycopg.Error, what: str) -> RecordError:
        text = f"{self.label}: {what}: {scrub(str(exc), self.url)}"
        if self.conn is not None and (self.conn.broken or self.conn.closed):
            self.close()  # the next call reconnects
            return RecordUnavailable(text)
        if isinstance(exc, psycopg.OperationalError):
            return RecordUnavailable(text)  # serialization failure, deadlock, shutdown
        if exc.sqlstate in _PG_WRITES_REFUSED:
            return RecordUnavailable(text)
        return RecordError(text)

    @contextmanager
    def transaction(self, write: bool, batch: bool = False) -> Iterator[Db]:
        if batch or not write:
            # verify and export read heads and entries from one snapshot
            begin = b"BEGIN" if write else b"BEGIN ISOLATION LEVEL REPEATABLE READ"
            with self._queued(begin) as db:
                yield db
            return
        conn = self._connect()
        try:
            with conn.transaction():
                yield self
        except psycopg.Error as exc:
            raise self._translate(exc, "transaction") from exc

    @contextmanager
    def _queued(self, begin: bytes) -> Iterator[Db]:
        """A transaction in as few round trips as its statements allow: BEGIN and every
        statement that returns nothing wait in a queue, and go in one pipeline with the
        next statement whose answer is needed or with COMMIT. So a batch commit is two
        round trips (BEGIN + the head lock, then the rest + COMMIT), plus a COPY for a big
        batch, and a one-query read is two (BEGIN + query, COMMIT). The transaction and
        its order are the same as unqueued; a failing statement aborts the rest, and the
        error is raised before this returns (so before any ack)."""
        conn = self._connect()
        self._queue = [(begin, None, False)]
        try:
            try:
                yield self
                if self._queue != [(begin, None, False)]:  # else nothing was sent or queued
                    self._queue.append((b"COMMIT", None, False))
                    self._flush()
            except BaseException:
                self._queue = None
                if not (conn.closed or conn.broken) and conn.info.transaction_status in (
                    TransactionStatus.INTRANS,
                    TransactionStatus.INERROR,
                ):
                    conn.execute(b"ROLLBACK")
                raise
        except psycopg.Error as exc:
            raise self._translate(exc, "transaction") from exc
        finally:
            self._queue = None

    def _flush(self, sql: Any = None, params: Any = None) -> list[Row]:
        """Send the queued statements, and `sql` after them, in one pipeline; returns the
        rows of `sql`. Outside a batch transaction, just `sql`."""
        assert self.conn is not None
        queue = self._queue
        if not queue:
            return [] if sql is None else self.conn.execute(sql, params).fetchall()
        self._queue = []
        cur = None
        with self.conn.pipeline():
            for statement, values, many in queue:
                if many:
                    self.conn.cursor().executemany(statement, values)
                else:
                    self.conn.execute(statement, values)
            if sql is not None:
                cur = self.conn.execute(sql, params)
        return [] if cur is None else cur.fetchall()

    def _later(self, sql: Any, params: Any, many: bool = False) -> None:
        """Queue a statement that returns nothing (in a batch), or run it now."""
        assert self.conn is not None
        if self._queue is not None:
            self._queue.append((sql, params, many))
        elif many:
            with self.conn.cursor() as cur:
                cur.executemany(sql, params)
        else:
            self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        assert self.conn is not None
        if self._queue:
            return self._flush(self._pg(sql), params)
        return self.conn.execute(self._pg(sql), params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        assert self.conn is not None
        if self._queue:
            self._flush()
        return self.conn.execute(self._pg(sql), params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._later(self._pg(sql), list(rows), many=True)

    def insert_rows(self, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        # COPY costs a fraction of executemany's per-row client work (measured: the
        # record's commit rate roughly doubles); it fires INSERT triggers alike. In a
        # batch, fewer than COPY_ROWS rows go as one JSON statement in its pipeline.
        assert self.conn is not None
        if self._queue is not None and len(rows) < COPY_ROWS:
            self._later(*_from_json(table, columns, rows))
            return
        if self._queue:
            self._flush()
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def upsert_rows(
        self,
        table: str,
        key: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
    ) -> None:
        # One statement over the rows as JSON instead of a statement per row: same effect,
        # and a fraction of the client work of executemany, or of arrays (psycopg dumps a
        # bytea array element by element: measured 3x slower for the checkpoints).
        sets = ", ".join(f"{name} = excluded.{name}" for name, _ in columns if name != key)
        sql, params = _upsert_source(table, columns, rows)
        self._later(sql + f" ON CONFLICT ({key}) DO UPDATE SET {sets}".encode(), params)

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        assert self.conn is not None
        if self._queue:
            self._flush()  # the named cursor needs the transaction begun
        with self.conn.cursor(name="tagwatch_stream") as cur:
            cur.itersize = 2000
            cur.execute(self._pg(sql), params)
            yield from cur

    def script(self, statements: Iterable[str]) -> None:
        assert self.conn is not None
        if self._queue:
            self._flush()
        for statement in statements:
            self.conn.execute(statement.encode())  # bytes: no placeholder parsing

    def lost_race(self, exc: RecordError) -> bool:
        cause = exc.__cause__
        lost = isinstance(cause, psycopg.errors.DeadlockDetected) or (
            isinstance(cause, psycopg.errors.UniqueViolation)
            and cause.diag.table_name == "entries"
        )
        if lost:
            # A fresh connection for the redo: after a pipeline that failed halfway,
            # psycopg may count as prepared a statement whose PREPARE the server skipped
            # ("prepared statement _pg3_3 does not exist", test_two_writers_on_one_chain).
            self.close()
        return lost

    def lock_known_heads(self, chains: list[str]) -> None:
        # Queued, so in the batch's one pipeline; in the same order as lock_heads, so a
        # writer locking them and one knowing them wait for each other, never deadlock.
        self._later(
            b"SELECT chain FROM chain_heads WHERE chain = ANY(%s::text[]) ORDER BY chain "
            b"FOR UPDATE",
            (chains,),
        )

    def lock_heads(self, chains: list[str], genesis: str) -> dict[str, tuple[int, str]]:
        # One statement creates missing heads and row-locks every head in sorted order
        # (DO UPDATE locks an existing row, unlike DO NOTHING): two writers cannot fork
        # a chain, and a new chain cannot deadlock against an existing one.
        # In a batch transaction it goes in one round trip with the BEGIN.
        rows = self._flush(
            b"INSERT INTO chain_heads (chain, seq, hash) "
            b"SELECT c, 0, %s FROM unnest(%s::text[]) AS c ORDER BY c "
            b"ON CONFLICT (chain) DO UPDATE SET chain = excluded.chain "
            b"RETURNING chain, seq, hash",
            (genesis, chains),
        )
        return {chain: (seq, digest) for chain, seq, digest in rows}


def _from_json(table: str, columns: str, rows: Sequence[Sequence[Any]]) -> tuple[bytes, tuple]:
    """INSERT of rows sent as one JSON array of objects, typed by the table's own row type
    (json_populate_recordset): orjson writes them in a fraction of the time psycopg takes
    to adapt arrays, floats keep every bit (shortest round-trip text both ways), and bytes
    go as bytea's hex text."""
    names = [name.strip() for name in columns.split(",")]
    payload = orjson.dumps(
        [
            {name: _json_value(value) for name, value in zip(names, row, strict=True)}
            for row in rows
        ]
    )
    listed = ", ".join(names)
    sql = (
        f"INSERT INTO {table} ({listed}) SELECT {listed} "
        f"FROM json_populate_recordset(NULL::{table}, %s::json)"
    )
    return sql.encode(), (payload.decode(),)


def _upsert_source(
    table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
) -> tuple[bytes, dict]:
    """INSERT of rows given as one JSON array of objects, typed by `columns` (name, pg type),
    except bytea columns: their values go concatenated in one binary parameter, and the JSON
    holds each value's offset and length. A checkpoint batch (1,001 states, about 1 MB) as
    hex text inside JSON cost the server twice the bytes to read and a JSON string and a hex
    decode per value; sliced from one binary blob it is a copy (docs/POSTGRESQL.md)."""
    blobs: dict[str, list[bytes]] = {name: [] for name, kind in columns if kind == "bytea"}
    offsets = dict.fromkeys(blobs, 1)  # substring() counts from 1
    out = []
    for row in rows:
        values: dict[str, Any] = {}
        for (name, _), value in zip(columns, row, strict=True):
            if name not in blobs:
                values[name] = value
            elif value is not None:  # else both absent: substring(... for NULL) is NULL
                blobs[name].append(value)
                values[f"{name}__at"], values[f"{name}__len"] = offsets[name], len(value)
                offsets[name] += len(value)
        out.append(values)
    fields, picks, params = [], [], {"rows": orjson.dumps(out).decode()}
    for name, kind in columns:
        if name in blobs:
            fields += [f"{name}__at int", f"{name}__len int"]
            picks.append(f"substring(%({name})s::bytea from r.{name}__at for r.{name}__len)")
            params[name] = psycopg.Binary(b"".join(blobs[name]))  # sent as is, not hex
        else:
            fields.append(f"{name} {kind}")
            picks.append(f"r.{name}")
    listed = ", ".join(name for name, _ in columns)
    sql = (
        f"INSERT INTO {table} ({listed}) SELECT {', '.join(picks)} "
        f"FROM json_to_recordset(%(rows)s::json) AS r({', '.join(fields)})"
    )
    return sql.encode(), params


def _json_value(value: Any) -> Any:
    return "\\x" + value.hex() if isinstance(value, bytes) else value


def _create_private(path: str, label: str) -> None:
    """Create a new SQLite file readable by its owner only (SQLite gives its -wal and -shm
    files the database file's mode); an existing file is left as it is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise RecordError(f"{label}: cannot create: {exc.strerror}") from None
    os.close(fd)


def _quote_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path)


def connect(url: str, create: bool = True) -> Db:
    """create False: opening for reading never makes a SQLite file (RecordMissing)."""
    if url.startswith("sqlite:"):
        return SqliteDb(url, create)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDb(url)
    raise RecordError(f"record url {redact_url(url)!r}: expected sqlite:/// or postgresql://")
