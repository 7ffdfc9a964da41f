"""Partition leases in PostgreSQL (DESIGN 7): who serves which partition, with an epoch.

One row per partition (partition, owner, epoch, expires_at) and one per worker
(worker, heartbeat). Every time is the database's clock (now()): the workers' clocks are
never compared with each other or with the database's.

- A worker acquires only a free or expired partition, and each acquisition adds 1 to the
  epoch; it renews the leases it holds well within `ttl_s`; a lease that expired before
  its renewal is lost (it may be acquired again, under a new epoch).
- Spread: a worker aims at ceil(K / live workers) partitions (live: a heartbeat within
  ttl_s) and releases one extra per round, so a newcomer finds free partitions.
- The fence is not here but in the record's batch transaction (Record.commit's
  `fence`): it row-locks the lease `FOR SHARE` where owner and epoch still match, so a
  takeover (`FOR UPDATE SKIP LOCKED` here) never overlaps a commit of the old owner, and
  a zombie's commit after the takeover finds no matching row and is refused.

Synchronous (one autocommit connection of its own): the daemon calls it from a thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psycopg

from tagwatch.record.db import redact_url, scrub
from tagwatch.record.model import Fence, RecordError, RecordUnavailable
from tagwatch.record.store import LEASES_TABLE

WORKERS_TABLE = "cluster_workers"

_DDL = [
    f"""CREATE TABLE IF NOT EXISTS {LEASES_TABLE} (
        partition INTEGER PRIMARY KEY, owner TEXT, epoch BIGINT NOT NULL DEFAULT 0,
        expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity')""",
    f"""CREATE TABLE IF NOT EXISTS {WORKERS_TABLE} (
        worker TEXT PRIMARY KEY, heartbeat TIMESTAMPTZ NOT NULL)""",
    # The outbox rows of cluster mode carry their partition: only its owner publishes or
    # sends them (the record's single-process schema does without the column).
    "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS partition INTEGER",
    "CREATE INDEX IF NOT EXISTS outbox_partition_due ON outbox (partition, not_before) "
    "WHERE status = 'pending'",
]

@dataclass
class Round:
    """What one `Leases.round` changed: partition -> epoch."""

    acquired: dict[int, int]
    lost: list[int]
    surplus: list[int]  # held beyond the fair share: stop them, then `release` them
    renewed: int
    live_workers: int


class Leases:
    def __init__(self, url: str, worker: str, partitions: int, ttl_s: float) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise RecordError(
                f"cluster mode needs a PostgreSQL record, not {redact_url(url)!r}: "
                "the leases and the fence live in its database"
            )
        self.url, self.label = url, redact_url(url)
        self.worker, self.partitions, self.ttl_s = worker, partitions, float(ttl_s)
        self.held: dict[int, int] = {}  # partition -> epoch, as of the last round
        self._conn: psycopg.Connection | None = None

    # ---- connection ---------------------------------------------------------------

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            except psycopg.Error as exc:
                text = scrub(str(exc), self.url)
                raise RecordUnavailable(f"{self.label}: leases: {text}") from None
        return self._conn

    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            cur = self._db().execute(sql, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn = None
            raise RecordUnavailable(f"{self.label}: leases: {scrub(str(exc), self.url)}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- setup --------------------------------------------------------------------

    def setup(self) -> None:
        """Create the tables and the K partition rows; refuse a K other workers disagree with."""
        conn = self._db()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('tagwatch.cluster.leases'))")
                for statement in _DDL:
                    conn.execute(statement)
                (count,) = conn.execute(f"SELECT count(*) FROM {LEASES_TABLE}").fetchone()
                if count == 0:
                    conn.execute(
                        f"INSERT INTO {LEASES_TABLE} (partition) "
                        "SELECT generate_series(0, %s - 1)",
                        (self.partitions,),
                    )
                    count = self.partitions
        except psycopg.Error as exc:
            raise RecordUnavailable(f"{self.label}: leases: {scrub(str(exc), self.url)}") from None
        if count != self.partitions:
            raise RecordError(
                f"[cluster] partitions = {self.partitions}, but {self.label} holds leases of "
                f"{count} partitions: every worker (and the broker's partition mapping) must "
                "use the same number"
            )

    # ---- one round ----------------------------------------------------------------

    def round(self) -> Round:
        """Heartbeat, renew, then acquire up to the fair share, or name one surplus lease
        for the caller to stop and `release`.

        Call it every ttl_s / 3 or so. Returns what changed; `held` is updated."""
        ttl = f"{self.ttl_s} seconds"
        self._run(
            f"INSERT INTO {WORKERS_TABLE} (worker, heartbeat) VALUES (%s, now()) "
            "ON CONFLICT (worker) DO UPDATE SET heartbeat = now()",
            (self.worker,),
        )
        lost = self.renew()
        renewed = len(self.held)
        (live,) = self._run(
            f"SELECT count(*) FROM {WORKERS_TABLE} WHERE heartbeat > now() - %s::interval",
            (ttl,),
        )[0]
        share = math.ceil(self.partitions / max(1, live))
        acquired: dict[int, int] = {}
        surplus: list[int] = []
        if len(self.held) < share:
            self._end_stopped_fences(ttl)
            acquired = self._acquire(share - len(self.held), ttl)
            self.held.update(acquired)
        elif len(self.held) > share and self._someone_short(share, ttl):
            surplus = [max(self.held)]  # one a round: the newcomer takes it, then the next
        return Round(acquired, lost, surplus, renewed, live)

    def _renew(self, ttl: str) -> dict[int, int]:
        """Extend the unexpired leases still ours at the epoch we hold."""
        if not self.held:
            return {}
        rows = self._run(
            f"UPDATE {LEASES_TABLE} AS l SET expires_at = now() + %s::interval "
            "FROM unnest(%s::int[], %s::bigint[]) AS h(partition, epoch) "
            "WHERE l.partition = h.partition AND l.epoch = h.epoch AND l.owner = %s "
            "AND l.expires_at > now() RETURNING l.partition, l.epoch",
            (ttl, list(self.held), list(self.held.values()), self.worker),
        )
        return dict(rows)

    def _end_stopped_fences(self, ttl: str) -> None:
        """End the transactions that hold a lease row share-locked (a fence) while idle for
        longer than the TTL: their process was stopped halfway through a commit (SIGSTOP,
        a VM pause) and would block every takeover of those partitions (SKIP LOCKED). The
        fence's own idle_in_transaction_session_timeout does not fire in libpq's pipeline
        mode (seen on PostgreSQL 15 with psycopg 3: the transaction stayed idle for 15 s
        and more), so the taker ends them: pg_terminate_backend, same database role."""
        self._run(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
            "WHERE a.state = 'idle in transaction' AND a.pid <> pg_backend_pid() "
            "AND a.state_change < now() - %s::interval AND EXISTS (SELECT 1 FROM pg_locks l "
            f"WHERE l.pid = a.pid AND l.granted AND l.relation = '{LEASES_TABLE}'::regclass)",
            (ttl,),
        )

    def _acquire(self, wanted: int, ttl: str) -> dict[int, int]:
        # SKIP LOCKED: a row share-locked by a commit in flight (the old owner's fence) or
        # being taken by another worker is left for a later round.
        rows = self._run(
            f"UPDATE {LEASES_TABLE} SET owner = %s, epoch = epoch + 1, "
            "expires_at = now() + %s::interval "
            f"WHERE partition IN (SELECT partition FROM {LEASES_TABLE} "
            "WHERE owner IS NULL OR expires_at <= now() "
            "ORDER BY partition LIMIT %s FOR UPDATE SKIP LOCKED) "
            "RETURNING partition, epoch",
            (self.worker, ttl, wanted),
        )
        return dict(rows)

    def _someone_short(self, share: int, ttl: str) -> bool:
        """Whether a released partition would be taken: a live worker holds fewer than
        its share (only those acquire), so a release is never just taken back."""
        rows = self._run(
            f"SELECT w.worker, count(l.partition) FROM {WORKERS_TABLE} w "
            f"LEFT JOIN {LEASES_TABLE} l ON l.owner = w.worker AND l.expires_at > now() "
            "WHERE w.heartbeat > now() - %s::interval GROUP BY w.worker",
            (ttl,),
        )
        return any(n < share for _w, n in rows)

    def renew(self) -> list[int]:
        """Renew only (between the takes of a long round); returns the leases lost."""
        renewed = self._renew(f"{self.ttl_s} seconds")
        lost = [p for p in self.held if p not in renewed]
        self.held = renewed
        return lost

    def release(self, partitions: list[int]) -> None:
        """Give these leases up (the caller has stopped their sessions and commits)."""
        if not partitions:
            return
        self._run(
            f"UPDATE {LEASES_TABLE} SET owner = NULL, expires_at = '-infinity' "
            "WHERE owner = %s AND partition = ANY(%s::int[])",
            (self.worker, partitions),
        )
        for p in partitions:
            self.held.pop(p, None)

    def leave(self) -> None:
        """At a clean stop: every lease released and the heartbeat gone."""
        self.release(list(self.held))
        self._run(f"DELETE FROM {WORKERS_TABLE} WHERE worker = %s", (self.worker,))

    def fence(self, partition: int) -> Fence | None:
        epoch = self.held.get(partition)
        return None if epoch is None else Fence(partition, self.worker, epoch)
