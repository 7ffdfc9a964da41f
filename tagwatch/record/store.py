"""The case record: append-only hash-chained entries, the outbox and rule checkpoints.

Synchronous and thread-safe (one lock per Record): the async daemon calls it from a
worker thread. One commit is one database transaction holding everything a micro-batch
changed, so a crash leaves either all of a batch's effects or none.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tagwatch.delivery_terms import STATUS_RANK, redact
from tagwatch.record import chain as chains
from tagwatch.record import near, retention
from tagwatch.record.canon import GENESIS, canonical
from tagwatch.record.db import Db, connect
from tagwatch.record.model import (
    Batch,
    Fence,
    Fenced,
    OutboxItem,
    OutboxRow,
    Problem,
    PurgeReport,
    RecordError,
    RecordMissing,
    VerifyReport,
)
from tagwatch.record.schema import migrate

T = TypeVar("T")
_HEAD_COLUMNS = (("chain", "text"), ("seq", "bigint"), ("hash", "text"))
_MAX_KNOWN_HEADS = 200_000  # chains whose head a writer remembers (about 200 bytes each)
_CHECKPOINT_COLUMNS = (("key", "text"), ("state", "bytea"), ("recorded_at", "float8"))
_UPSERT_ALERT = (
    "INSERT INTO alert_latest (alert_id, entry_id, state, body) "
    "VALUES (?, (SELECT id FROM entries WHERE chain = ? AND seq = ?), ?, ?) "
    "ON CONFLICT (alert_id) DO UPDATE SET entry_id = excluded.entry_id, "
    "state = excluded.state, body = excluded.body"
)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (alert_id, channel, target, body, not_before, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Cluster mode (tagwatch/ingest/leases.py creates the table): a batch's fence, checked
# first in its transaction. FOR SHARE holds the lease row until the commit, so a takeover
# (which locks it FOR UPDATE) never overlaps this batch; no row means fenced. A process
# stopped halfway through the transaction (SIGSTOP, a long pause) would hold that lock and
# so block the takeover for ever: the transaction's idle timeout (the first parameter, in
# ms; Record.fence_idle_s) has the server end it, and the stopped commit fails.
LEASES_TABLE = "cluster_leases"
_FENCE = (
    "WITH idle AS (SELECT set_config('idle_in_transaction_session_timeout', ?, true)) "
    f"SELECT partition FROM {LEASES_TABLE}, idle WHERE (partition, owner, epoch) IN "
    f"(SELECT * FROM unnest(?::int[], ?::text[], ?::bigint[])) FOR SHARE OF {LEASES_TABLE}"
)
# Cluster mode's outbox rows carry their partition (the column is added by leases.py).
_INSERT_OUTBOX_PARTITION = (
    "INSERT INTO outbox (alert_id, channel, target, body, not_before, created_at, updated_at, "
    "partition) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_OUTBOX_COLUMNS = "id, alert_id, channel, target, body, not_before, attempts, last_error"
# What the page may show of a delivery: never `target` (a phone number).
_DELIVERY_COLUMNS = "id, channel, body, status, attempts, last_error, result, updated_at"


class Record:
    def __init__(self, db: Db, migrations_applied: list[int]) -> None:
        self._db = db
        self._lock = threading.Lock()
        self.migrations_applied = migrations_applied
        # Reads go through a connection of their own (opened at the first read), so a
        # long read (a dashboard's track) never holds up the ingest commit: SQLite in
        # WAL mode and PostgreSQL both let a reader and the writer run at once. An
        # in-memory SQLite database is one connection's own: it reads through the writer.
        self._reader: Db | None = None
        self._read_lock = threading.Lock()
        # How long a fenced batch transaction may sit idle before the server ends it
        # (_FENCE); cluster mode sets it to its lease TTL.
        self.fence_idle_s = 5.0
        # PostgreSQL: each chain's (seq, hash) as this writer's last committed batch left
        # it, so the next batch on those chains needs no head lock first (_write).
        self._heads: dict[str, tuple[int, str]] = {}

    @classmethod
    def open(cls, url: str, create: bool = True) -> Record:
        """Open (creating or migrating the schema) the record at url.

        create False (commands that read the record): a missing SQLite file or a database
        without the record's schema is RecordMissing, and nothing is created.
        """
        db = connect(url, create)
        try:
            if not create and not db.has_schema():
                raise RecordMissing(
                    f"{db.label}: no case record there (the database has no tagwatch schema)"
                )
            applied = migrate(db)
        except BaseException:
            db.close()
            raise
        return cls(db, applied)

    @property
    def label(self) -> str:
        """The database URL without its password."""
        return self._db.label

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # --- writing -------------------------------------------------------------------

    def commit(
        self, batch: Batch, recorded_at: float, fence: Fence | Sequence[Fence] | None = None
    ) -> None:
        """Everything of one micro-batch, in one transaction.

        fence (cluster mode): one or more, checked first in the same transaction; Fenced,
        and nothing written, when its owner no longer holds a partition at its epoch."""
        outbox = [_outbox_row(item, recorded_at) for item in batch.outbox]
        partitioned = [item.partition for item in batch.outbox if item.partition is not None]
        if partitioned:  # cluster mode: every row carries its partition
            if len(partitioned) != len(outbox):
                raise RecordError(f"{self.label}: outbox items with and without a partition")
            outbox = [(*row, p) for row, p in zip(outbox, partitioned, strict=True)]
        points = [
            _checkpoint_row(key, state, recorded_at) for key, state in batch.checkpoints.items()
        ]
        with self._lock:
            known = self._known_heads(batch)
            if known is not None:
                try:
                    self._write(batch, outbox, partitioned, points, recorded_at, fence, known)
                    return
                except RecordError as exc:
                    self._heads.clear()
                    if not self._db.lost_race(exc):
                        raise
                    # another writer appended to one of these chains: lock and redo
            self._write(batch, outbox, partitioned, points, recorded_at, fence, None)

    def _known_heads(self, batch: Batch) -> dict[str, tuple[int, str]] | None:
        """A copy of the heads of the batch's chains as this writer's last commits left
        them, when it knows them all (PostgreSQL only), else None: lock them."""
        if self._db.dialect != "postgresql" or not batch.entries:
            return None
        try:
            return {chain: self._heads[chain] for chain in {e.chain for e in batch.entries}}
        except KeyError:
            return None

    def _write(
        self,
        batch: Batch,
        outbox: list[tuple],
        partitioned: list[int],
        points: list[tuple],
        recorded_at: float,
        fence: Fence | Sequence[Fence] | None,
        known: dict[str, tuple[int, str]] | None,
    ) -> None:
        """The batch's transaction. known: the chains' heads as this writer left them: the
        heads are locked in the same pipeline as the rest, not read first, so one round
        trip fewer. Entries are append-only and UNIQUE (chain, seq), so if another writer
        appended to one of those chains since, the seq this batch gives its first entry
        there is taken: the insert fails, nothing is written, and `lost_race` says so."""
        heads: dict[str, tuple[int, str]] = {}
        with self._db.transaction(write=True, batch=True) as db:
            if fence is not None:
                self._check_fence(db, fence)
            if batch.entries:
                names = sorted({e.chain for e in batch.entries})
                if known is not None:
                    db.lock_known_heads(names)
                    heads = known
                else:
                    heads = db.lock_heads(names, GENESIS)
                rows = chains.append_rows(batch.entries, heads, recorded_at)
                db.insert_rows("entries", chains.INSERT_COLUMNS, rows)
                places = near.place_rows(rows, batch.entries)
                if places:
                    db.insert_rows("fix_places", near.PLACE_COLUMNS, places)
                db.upsert_rows(
                    "chain_heads",
                    "chain",
                    _HEAD_COLUMNS,
                    [(c, s, h) for c, (s, h) in heads.items()],
                )
                alerts = _alert_rows(rows)
                if alerts:
                    db.executemany(_UPSERT_ALERT, alerts)
            if outbox:
                db.executemany(_INSERT_OUTBOX_PARTITION if partitioned else _INSERT_OUTBOX, outbox)
            if points:
                db.upsert_rows("checkpoints", "key", _CHECKPOINT_COLUMNS, points)
        if self._db.dialect == "postgresql":  # committed: these are the heads now
            if len(self._heads) + len(heads) > _MAX_KNOWN_HEADS:
                self._heads.clear()
            self._heads.update(heads)

    def _check_fence(self, db: Db, fence: Fence | Sequence[Fence]) -> None:
        if db.dialect != "postgresql":
            raise RecordError(f"{self.label}: a fenced commit (cluster mode) needs PostgreSQL")
        fences = [fence] if isinstance(fence, Fence) else list(fence)
        if not fences:
            return
        columns = zip(*((f.partition, f.owner, f.epoch) for f in fences), strict=True)
        params = (str(int(self.fence_idle_s * 1000)), *(list(column) for column in columns))
        held = {row[0] for row in db.query(_FENCE, params)}
        lost = [f for f in fences if f.partition not in held]
        if lost:
            f = lost[0]
            raise Fenced(
                f"{self.label}: partition {f.partition}: worker {f.owner!r} no longer "
                f"holds its lease at epoch {f.epoch}; the batch was not written",
                [x.partition for x in lost],
            )

    # --- reading -------------------------------------------------------------------

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.reading() as db:
            return db.query(sql, params)

    @contextmanager
    def reading(self) -> Iterator[Db]:
        """A read transaction on the reading connection (not the writer's lock)."""
        if getattr(self._db, "path", None) == ":memory:":
            with self._lock, self._db.transaction(write=False) as db:
                yield db
            return
        with self._read_lock:
            if self._reader is None:
                self._reader = connect(self._db.url)
            with self._reader.transaction(write=False) as db:
                yield db

    def read(self, fn: Callable[[Db], T]) -> T:
        """fn(db) in one read transaction (one snapshot), e.g. anchor.py's checks."""
        with self.reading() as db:
            return fn(db)

    def checkpoints(self) -> dict[str, bytes]:
        return {
            key: bytes(state) for key, state in self._read("SELECT key, state FROM checkpoints")
        }

    def latest_alerts(self, state: str | None = None, limit: int = 1000) -> list[dict]:
        """Latest alert record of each alert id, most recently changed first.

        state "open" means anything but resolved; another state matches exactly.
        """
        where, params = "", ()
        if state == "open":
            where = "WHERE state IS NULL OR state <> 'resolved'"
        elif state is not None:
            where, params = "WHERE state = ?", (state,)
        rows = self._read(
            f"SELECT body FROM alert_latest {where} ORDER BY entry_id DESC LIMIT ?",
            (*params, limit),
        )
        return [json.loads(body) for (body,) in rows]

    def alert_history(self, alert_id: str) -> list[dict]:
        """Every entry about that alert (alert records and operator actions), in order.

        Each is the whole entry: chain, seq, kind, tag, event_ts, alert_id, recorded_at,
        hash and body (a dict).
        """
        rows = self._read(
            f"SELECT {chains.ENTRY_COLUMNS} FROM entries WHERE alert_id = ? ORDER BY id",
            (alert_id,),
        )
        return [_entry_dict(chains.StoredEntry(*row)) for row in rows]

    def track(self, tag: str, since: float) -> list[dict]:
        """Bodies of the tag's accepted fixes with event_ts >= since, by event_ts.

        Purged fixes are left out.
        """
        rows = self._read(
            "SELECT body FROM entries WHERE tag = ? AND kind = 'fix' AND event_ts >= ? "
            "AND body IS NOT NULL ORDER BY event_ts, id",
            (tag, float(since)),
        )
        return [json.loads(body) for (body,) in rows]

    def track_page(
        self, tag: str, since: float, limit: int, after: tuple[float, int] | None = None
    ) -> tuple[list[dict], tuple[float, int] | None]:
        """At most `limit` of `track`'s fixes, after the cursor `after` (event_ts, entry
        id); returns them and the cursor of the next page (None: this was the last)."""
        ts, last = after if after is not None else (float(since), -1)
        rows = self._read(
            "SELECT event_ts, id, body FROM entries WHERE tag = ? AND kind = 'fix' "
            "AND event_ts >= ? AND (event_ts > ? OR (event_ts = ? AND id > ?)) "
            "AND body IS NOT NULL ORDER BY event_ts, id LIMIT ?",
            (tag, float(since), ts, ts, last, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = (float(rows[-1][0]), int(rows[-1][1])) if more else None
        return [json.loads(body) for _ts, _id, body in rows], cursor

    def latest_alerts_page(
        self, state: str | None, limit: int, before: int | None = None
    ) -> tuple[list[dict], int | None]:
        """`latest_alerts` one page at a time: those changed before the cursor `before`
        (an entry id); returns them and the next page's cursor (None: the last page)."""
        where, params = ["1 = 1"], []
        if state == "open":
            where.append("(state IS NULL OR state <> 'resolved')")
        elif state is not None:
            where.append("state = ?")
            params.append(state)
        if before is not None:
            where.append("entry_id < ?")
            params.append(before)
        rows = self._read(
            f"SELECT entry_id, body FROM alert_latest WHERE {' AND '.join(where)} "
            "ORDER BY entry_id DESC LIMIT ?",
            (*params, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [json.loads(body) for _id, body in rows], (int(rows[-1][0]) if more else None)

    def deliveries(self, alert_id: str) -> list[dict]:
        """How the notifications of one alert went: one dict per outbox row but "mqtt",
        in the order they were queued. Never the target (phone number).

        Keys: row, channel, victim (id, from the row's body), status (pending, done,
        failed), attempts, last_error (phone numbers redacted), sid, delivery (the
        provider's most advanced status: from the send's result and the recorded status
        callbacks, kind "delivery"; None if it gave none), error_code (of that callback),
        not_before, updated_at.
        """
        rows = self._read(
            f"SELECT {_DELIVERY_COLUMNS}, not_before FROM outbox "
            "WHERE alert_id = ? AND channel <> 'mqtt' ORDER BY id",
            (alert_id,),
        )
        callbacks = self._read(
            "SELECT body FROM entries WHERE alert_id = ? AND kind = 'delivery' "
            "AND body IS NOT NULL ORDER BY id",
            (alert_id,),
        )
        reports = [json.loads(body) for (body,) in callbacks]
        return [_delivery(row, reports) for row in rows]

    # --- outbox --------------------------------------------------------------------

    def outbox_due(
        self, now: float, limit: int = 100, partitions: list[int] | None = None
    ) -> list[OutboxRow]:
        """Pending rows due by `now`; with `partitions` (cluster mode), only theirs."""
        mine, params = "", ()
        if partitions is not None:
            if not partitions:
                return []
            mine, params = f"AND partition IN ({','.join('?' * len(partitions))}) ", partitions
        rows = self._read(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending' "
            f"AND not_before <= ? {mine}ORDER BY not_before, id LIMIT ?",
            (float(now), *params, limit),
        )
        return [OutboxRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in rows]

    def _outbox_set(self, row_id: int, assignments: str, params: tuple) -> None:
        with self._lock, self._db.transaction(write=True) as db:
            count = db.execute(
                f"UPDATE outbox SET {assignments}, updated_at = ? WHERE id = ?",
                (*params, time.time(), row_id),
            )
        if count != 1:
            raise RecordError(f"{self.label}: outbox row {row_id}: no such row")

    def outbox_done(self, row_id: int, result: dict) -> None:
        text = canonical(result, f"outbox row {row_id}: result")
        self._outbox_set(row_id, "status = 'done', result = ?", (text,))

    def outbox_done_many(self, row_ids: list[int], result: dict) -> None:
        """Mark many rows done in one transaction (the publisher's whole burst)."""
        if not row_ids:
            return
        text = canonical(result, "outbox rows: result")
        now = time.time()
        with self._lock, self._db.transaction(write=True, batch=True) as db:
            for start in range(0, len(row_ids), 500):
                chunk = row_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                # executemany of one: PostgreSQL sends it with BEGIN and COMMIT at once
                db.executemany(
                    f"UPDATE outbox SET status = 'done', result = ?, updated_at = ? "
                    f"WHERE id IN ({marks})",
                    [(text, now, *chunk)],
                )

    def outbox_retry(self, row_id: int, not_before: float, error: str) -> None:
        self._outbox_set(
            row_id,
            "not_before = ?, attempts = attempts + 1, last_error = ?",
            (float(not_before), error),
        )

    def outbox_failed(self, row_id: int, error: str) -> None:
        self._outbox_set(
            row_id, "status = 'failed', attempts = attempts + 1, last_error = ?", (error,)
        )

    def outbox_depth(self) -> int:
        return int(self._read("SELECT count(*) FROM outbox WHERE status = 'pending'")[0][0])

    # --- evidence ------------------------------------------------------------------

    def verify(self, chain: str | None = None) -> list[Problem]:
        """Recompute every chain (or one); an empty list means intact (purges included)."""
        return self.verify_report(chain).problems

    def verify_report(self, chain: str | None = None) -> VerifyReport:
        """verify, plus how many entries of each chain have had their body purged."""
        with self._lock, self._db.transaction(write=False) as db:
            return chains.verify_report(db, chain)

    def purge(self, older_than: float, keep_window_s: float, now: float) -> PurgeReport:
        """Purge the bodies of fixes with event_ts < older_than, except alert evidence.

        A fix is kept when its event_ts lies within keep_window_s of an alert on its chain
        (from the alert's first to its last alert entry). Each chain is purged in its own
        transaction, together with the "purge" entry that records it (recorded_at and
        event_ts = now), so the lock on a case is short and a failure leaves each chain
        either purged and recorded or untouched. Fixes written before schema 2 (hash rule
        1) are never purged: they are counted as legacy_kept.
        """
        older_than, keep_window_s, now = float(older_than), float(keep_window_s), float(now)
        retention.check_args(older_than, keep_window_s, now)
        with self._lock, self._db.transaction(write=False) as db:
            names = retention.chains_with_candidates(db, older_than)
        report = PurgeReport(older_than, keep_window_s)
        for name in names:
            with self._lock, self._db.transaction(write=True) as db:
                self._heads.pop(name, None)  # the purge entry moves the chain's head
                report.chains[name] = retention.purge_chain(
                    db, name, older_than, keep_window_s, now
                )
        return report

    def near(self, query: near.NearQuery, who: str, via: str, now: float) -> list[dict]:
        """Crime-scene correlation (near.py): the tags with a fix within query.radius_m of
        the point in [since, until], one dict per tag and case. The query (who, via, when,
        why, parameters, what it returned) is committed before the answer is returned: on
        the audit chain and on each returned case's chain. NearRefused for bad parameters."""
        query.check()
        with self.reading() as db:
            results = near.find(db, query)
        self.commit(Batch(entries=near.audit_entries(query, results, who, via, now)), now)
        return results

    def export(
        self, case_id: str, since: float, until: float, out_dir: Path, force: bool = False
    ) -> Path:
        """Write the evidence bundle of a case and time range into out_dir (see export.py:
        an unknown case, since after until, a non-empty out_dir without force are refused)."""
        from tagwatch.record.export import write_bundle

        with self._lock, self._db.transaction(write=False) as db:
            return write_bundle(db, case_id, float(since), float(until), Path(out_dir), force)


def _outbox_row(item: OutboxItem, recorded_at: float) -> tuple:
    body = canonical(item.body, f"outbox item {item.channel!r} of alert {item.alert_id!r}")
    return (
        item.alert_id,
        item.channel,
        item.target,
        body,
        float(item.not_before),
        recorded_at,
        recorded_at,
    )


def _checkpoint_row(key: str, state: bytes, recorded_at: float) -> tuple:
    if not isinstance(state, bytes | bytearray | memoryview):
        raise RecordError(f"checkpoint {key!r}: state must be bytes, not {type(state).__name__}")
    return (key, bytes(state), recorded_at)


def _alert_rows(rows: list[tuple]) -> list[tuple]:
    """alert_latest upserts for the alert entries among inserted rows, last one per id."""
    latest: dict[str, tuple] = {}
    for chain, seq, kind, _tag, _ts, alert_id, _at, body, *_hashes in rows:
        if kind == "alert" and alert_id is not None:
            state = json.loads(body).get("state")
            latest[alert_id] = (
                alert_id,
                chain,
                seq,
                state if isinstance(state, str) else None,
                body,
            )
    return list(latest.values())


def _delivery(row: tuple, reports: list[dict]) -> dict:
    row_id, channel, body, status, attempts, last_error, result, updated_at, not_before = row
    body = json.loads(body)
    result = json.loads(result) if result else {}
    sid = result.get("sid")
    mine = [r for r in reports if str(r.get("row")) == str(row_id) or (sid and r.get("sid") == sid)]
    sent = result.get("status")
    best = {"status": sent} if isinstance(sent, str) else {}
    for report in mine:
        if STATUS_RANK.get(report.get("status"), -1) > STATUS_RANK.get(best.get("status"), -1):
            best = report
    return {
        "row": row_id,
        "channel": channel,
        "victim": body.get("victim"),
        "status": status,
        "attempts": attempts,
        "last_error": None if last_error is None else redact(last_error),
        "sid": sid if isinstance(sid, str) else None,
        "delivery": best.get("status"),
        "error_code": best.get("error_code"),
        "not_before": not_before,
        "updated_at": updated_at,
    }


def _entry_dict(row: chains.StoredEntry) -> dict:
    return {
        "chain": row.chain,
        "seq": row.seq,
        "kind": row.kind,
        "tag": row.tag,
        "event_ts": row.event_ts,
        "alert_id": row.alert_id,
        "recorded_at": row.recorded_at,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
        "body_hash": row.body_hash,
        "hash_rule": row.hash_rule,
        "body": None if row.body is None else json.loads(row.body),
    }
