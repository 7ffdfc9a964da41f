"""The record's schema: an ordered list of migrations, applied at open.

Migration N (1-based) brings the database to schema version N. Each runs in its own
transaction together with its row in `schema_version`, so a crash leaves a clean version.
Never edit a released migration: append a new one.
"""

from __future__ import annotations

import time

from tagwatch.record.db import Db
from tagwatch.record.model import RecordError
from tagwatch.record.near import CELL_SQL

_COMMON = [
    # Operational state, mutable, outside the chain.
    """CREATE TABLE chain_heads (
        chain TEXT PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)""",
    """CREATE TABLE checkpoints (
        key TEXT PRIMARY KEY, state {blob} NOT NULL, recorded_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE alert_latest (
        alert_id TEXT PRIMARY KEY, entry_id BIGINT NOT NULL, state TEXT,
        body TEXT NOT NULL)""",
    "CREATE INDEX alert_latest_order ON alert_latest (entry_id)",
    "CREATE INDEX outbox_due ON outbox (not_before) WHERE status = 'pending'",
    "CREATE INDEX entries_track ON entries (tag, event_ts) WHERE kind = 'fix'",
    "CREATE INDEX entries_alert ON entries (alert_id) WHERE alert_id IS NOT NULL",
]

_ENTRIES = """CREATE TABLE entries (
    id {id},
    chain TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL, tag TEXT,
    event_ts DOUBLE PRECISION, alert_id TEXT, recorded_at DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    UNIQUE (chain, seq))"""

_OUTBOX = """CREATE TABLE outbox (
    id {id},
    alert_id TEXT NOT NULL, channel TEXT NOT NULL, target TEXT NOT NULL, body TEXT NOT NULL,
    not_before DOUBLE PRECISION NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, result TEXT,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"""

_SQLITE_V1 = [
    _ENTRIES.format(id="INTEGER PRIMARY KEY"),
    _OUTBOX.format(id="INTEGER PRIMARY KEY"),
    *(s.format(blob="BLOB") for s in _COMMON),
    """CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
       BEGIN SELECT RAISE(ABORT, 'entries is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
       BEGIN SELECT RAISE(ABORT, 'entries is append-only: DELETE refused'); END""",
]

_PG_V1 = [
    _ENTRIES.format(id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    _OUTBOX.format(id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    *(s.format(blob="BYTEA") for s in _COMMON),
    """CREATE FUNCTION tagwatch_entries_append_only() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'entries is append-only: % refused', TG_OP; END $$""",
    """CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
       FOR EACH ROW EXECUTE FUNCTION tagwatch_entries_append_only()""",
    """CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
       FOR EACH STATEMENT EXECUTE FUNCTION tagwatch_entries_append_only()""",
]

# Schema 2: retention. Every entry names its hash rule (1: body hashed inline, the entries
# written before; 2: body hashed through body_hash, see canon.py). A rule-2 fix body may be
# purged to NULL; the triggers allow that one UPDATE and refuse every other. Existing rows
# keep rule 1 and their hashes untouched.
_ENTRIES_COLUMNS_V1 = (
    "id, chain, seq, kind, tag, event_ts, alert_id, recorded_at, body, prev_hash, hash"
)
# An UPDATE is a purge when a rule-2 fix loses its body and nothing else changes.
_PURGE_ONLY = " AND ".join(
    [
        "OLD.kind = 'fix'",
        "OLD.hash_rule = 2",
        "NEW.body IS NULL",
        *(
            f"NEW.{c} IS OLD.{c}"
            for c in (*_ENTRIES_COLUMNS_V1.split(", "), "body_hash", "hash_rule")
            if c != "body"
        ),
    ]
)
_PURGE_INDEX = (
    "CREATE INDEX entries_purge ON entries (chain, event_ts) "
    "WHERE kind = 'fix' AND body IS NOT NULL"
)

# SQLite cannot drop NOT NULL from a column: rebuild the table (same ids, same rows).
# DROP TABLE fires no DELETE trigger, and takes the old triggers and indexes with it.
_SQLITE_V2 = [
    """CREATE TABLE entries_v2 (
    id INTEGER PRIMARY KEY,
    chain TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL, tag TEXT,
    event_ts DOUBLE PRECISION, alert_id TEXT, recorded_at DOUBLE PRECISION NOT NULL,
    body TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    body_hash TEXT, hash_rule INTEGER NOT NULL,
    UNIQUE (chain, seq))""",
    f"INSERT INTO entries_v2 ({_ENTRIES_COLUMNS_V1}, body_hash, hash_rule) "
    f"SELECT {_ENTRIES_COLUMNS_V1}, NULL, 1 FROM entries ORDER BY id",
    "DROP TABLE entries",
    "ALTER TABLE entries_v2 RENAME TO entries",
    "CREATE INDEX entries_track ON entries (tag, event_ts) WHERE kind = 'fix'",
    "CREATE INDEX entries_alert ON entries (alert_id) WHERE alert_id IS NOT NULL",
    _PURGE_INDEX,
    f"""CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
       WHEN NOT ({_PURGE_ONLY})
       BEGIN SELECT RAISE(ABORT,
         'entries is append-only: UPDATE refused (only purging a fix body is allowed)'); END""",
    """CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
       BEGIN SELECT RAISE(ABORT, 'entries is append-only: DELETE refused'); END""",
]

# Comparing the rows as jsonb minus body also guards any column added later.
_PG_V2 = [
    "ALTER TABLE entries ADD COLUMN body_hash TEXT, "
    "ADD COLUMN hash_rule SMALLINT NOT NULL DEFAULT 1",
    "ALTER TABLE entries ALTER COLUMN hash_rule DROP DEFAULT",
    "ALTER TABLE entries ALTER COLUMN body DROP NOT NULL",
    _PURGE_INDEX,
    """CREATE OR REPLACE FUNCTION tagwatch_entries_append_only() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         IF TG_OP = 'UPDATE' THEN
           IF OLD.kind = 'fix' AND OLD.hash_rule = 2 AND NEW.body IS NULL
              AND to_jsonb(NEW) - 'body' = to_jsonb(OLD) - 'body' THEN
             RETURN NEW;
           END IF;
           RAISE EXCEPTION
             'entries is append-only: UPDATE refused (only purging a fix body is allowed)';
         END IF;
         RAISE EXCEPTION 'entries is append-only: % refused', TG_OP;
       END $$""",
]

# Schema 3: the place index of crime-scene correlation (near.py): one row per fix entry
# with a position, found by grid cell and time. Mutable state outside the chain; existing
# fixes with a body are indexed here, their `cell` computed as near.cell_of does.
_PLACES = [
    """CREATE TABLE fix_places (
    chain TEXT NOT NULL, seq BIGINT NOT NULL, tag TEXT, event_ts DOUBLE PRECISION NOT NULL,
    lat DOUBLE PRECISION, lon DOUBLE PRECISION, cell BIGINT,
    PRIMARY KEY (chain, seq))""",
    # covering the bounding box too: only fixes in the box are looked up and measured
    "CREATE INDEX fix_places_near ON fix_places (cell, event_ts, lat, lon)",
]
_BACKFILL = (
    "INSERT INTO fix_places (chain, seq, tag, event_ts, lat, lon, cell) "
    "SELECT chain, seq, tag, event_ts, lat, lon, {cell} FROM ("
    "SELECT chain, seq, tag, event_ts, {lat} AS lat, {lon} AS lon FROM entries "
    "WHERE kind = 'fix' AND body IS NOT NULL AND event_ts IS NOT NULL AND {numbers}) AS f"
)
_SQLITE_V3 = [
    *_PLACES,
    _BACKFILL.format(
        cell=CELL_SQL["sqlite"].format(lat="lat", lon="lon"),
        lat="json_extract(body, '$.lat')",
        lon="json_extract(body, '$.lon')",
        numbers="json_type(body, '$.lat') IN ('integer', 'real') "
        "AND json_type(body, '$.lon') IN ('integer', 'real')",
    ),
]
_PG_V3 = [
    *_PLACES,
    _BACKFILL.format(
        cell=CELL_SQL["postgresql"].format(lat="lat", lon="lon"),
        lat="(body::jsonb->>'lat')::float8",
        lon="(body::jsonb->>'lon')::float8",
        numbers="jsonb_typeof(body::jsonb->'lat') = 'number' "
        "AND jsonb_typeof(body::jsonb->'lon') = 'number'",
    ),
]

# Page fill of the two tables every batch rewrites (PostgreSQL storage parameters, not
# schema: no version of their own). A batch rewrites one chain head per chain it appends to
# (twice: the lock, then the new head) and one checkpoint per tag it saw. On full pages
# each new row version goes to another page and into the primary key again; with half of
# each page free it stays on its page (a HOT update: no index entry, pruned in place).
# Measured: about a tenth of a 2,000-fix batch commit (docs/POSTGRESQL.md). Set by the
# tables' owner when it opens the record (`tagwatch record init`); pages written before
# keep their old fill until rewritten (`VACUUM FULL chain_heads, checkpoints`).
_PG_FILL = {"chain_heads": 50, "checkpoints": 50}

# One entry per version: {dialect: statements}.
MIGRATIONS: list[dict[str, list[str]]] = [
    {"sqlite": _SQLITE_V1, "postgresql": _PG_V1},
    {"sqlite": _SQLITE_V2, "postgresql": _PG_V2},
    {"sqlite": _SQLITE_V3, "postgresql": _PG_V3},
]

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"""


def current_version(db: Db) -> int:
    row = db.query("SELECT max(version) FROM schema_version")[0]
    return int(row[0] or 0)


def migrate(db: Db) -> list[int]:
    """Bring the schema up to date; returns the versions applied (empty if none).

    An up-to-date schema is only read: a role without DDL rights (deploy/postgres) opens it.
    """
    if db.has_schema():
        with db.transaction(write=False):
            if current_version(db) == len(MIGRATIONS) and not _unfilled(db):
                return []
    with db.transaction(write=True):
        _one_migrator(db)  # IF NOT EXISTS alone races with a second daemon starting
        db.script([_VERSION_TABLE])
    applied = []
    for version, statements in enumerate(MIGRATIONS, start=1):
        with db.transaction(write=True):
            _one_migrator(db)
            found = current_version(db)
            if found > len(MIGRATIONS):
                raise RecordError(
                    f"{db.label}: schema_version is {found}, newer than this tagwatch "
                    f"knows ({len(MIGRATIONS)}); upgrade tagwatch, or open another database"
                )
            if found >= version:
                continue
            db.script(statements[db.dialect])
            db.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
            applied.append(version)
    unfilled = _unfilled(db)
    if unfilled:
        with db.transaction(write=True):
            db.script(f"ALTER TABLE {table} SET (fillfactor = {fill})" for table, fill in unfilled)
    return applied


def _unfilled(db: Db) -> list[tuple[str, int]]:
    """The tables of _PG_FILL this role owns whose fillfactor is not set (one set by hand
    stays; a role that does not own them, as deploy/postgres's tagwatch_app, leaves them)."""
    if db.dialect != "postgresql":
        return []
    rows = db.query(
        "SELECT relname FROM pg_class WHERE oid = ANY(?::regclass[]) "
        "AND pg_has_role(relowner, 'USAGE') "
        "AND position('fillfactor=' in array_to_string(coalesce(reloptions, '{}'), ',')) = 0",
        (list(_PG_FILL),),
    )
    return [(name, _PG_FILL[name]) for (name,) in rows]


def _one_migrator(db: Db) -> None:
    """Two daemons starting together (cluster workers) must not both migrate."""
    if db.dialect == "postgresql":
        db.query("SELECT pg_advisory_xact_lock(hashtext('tagwatch.record.schema'))")
