"""The case record's value types and errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec


class RecordError(Exception):
    """Anything wrong with the case record: bad input, bad schema, refused statement."""


class RecordMissing(RecordError):
    """Opened for reading, the record is not there: no SQLite file, or a database without
    the record's schema (a mistyped URL). Nothing was created."""


class RecordUnavailable(RecordError):
    """The database cannot be reached or is busy right now; retry the same call later.

    The daemon buffers its batch and retries; the next call reconnects.
    """


class Fenced(RecordError):
    """A batch commit refused because this worker no longer holds the partition's lease
    at the epoch it committed under (cluster mode, tagwatch/ingest/leases.py). Nothing of
    the batch was written; never retry it: the partition belongs to another worker."""

    def __init__(self, message: str, partitions: list[int] | None = None) -> None:
        super().__init__(message)
        self.partitions = partitions or []  # the partitions whose fence failed


@dataclass(frozen=True)
class Fence:
    """What a batch commit must prove in its own transaction: `owner` still holds the
    lease of `partition` at `epoch`."""

    partition: int
    owner: str
    epoch: int


class Entry(msgspec.Struct, frozen=True):
    """One entry to append to a chain. A struct: the daemon makes one per fix and case,
    and a frozen dataclass costs ten times as much to build."""

    chain: str
    kind: str
    body: dict
    tag: str | None = None
    event_ts: float | None = None
    alert_id: str | None = None


@dataclass(frozen=True)
class OutboxItem:
    alert_id: str
    channel: str
    target: str
    body: dict
    not_before: float
    # Cluster mode: the partition whose owner publishes or sends it (DESIGN 7); None in a
    # single process (and then the row has no such column written).
    partition: int | None = None


@dataclass
class Batch:
    entries: list[Entry] = field(default_factory=list)
    outbox: list[OutboxItem] = field(default_factory=list)
    checkpoints: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    alert_id: str
    channel: str
    target: str
    body: dict
    not_before: float
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class Problem:
    """One finding of `Record.verify`: which entry (chain, seq) and what.

    `what` is one of "altered", "removed", "reordered", "truncated"; `detail` says more.
    """

    chain: str
    seq: int
    what: str
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    """What `Record.verify_report` found: problems (empty: intact), and per chain how many
    entries have had their body purged (a recorded purge is not a problem)."""

    problems: list[Problem]
    purged: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainPurge:
    """One chain's part of a purge.

    purged: fix bodies removed now; kept_in_window: old fixes kept as alert evidence;
    legacy_kept: old fixes written before schema 2 (hash rule 1), which cannot be purged
    without breaking their hash; first_seq, last_seq: the purged range (0 if none);
    purge_seq: the seq of the purge entry recording it (0 if nothing was purged).
    """

    chain: str
    purged: int
    kept_in_window: int
    legacy_kept: int
    first_seq: int = 0
    last_seq: int = 0
    purge_seq: int = 0


@dataclass(frozen=True)
class PurgeReport:
    older_than: float
    keep_window_s: float
    chains: dict[str, ChainPurge] = field(default_factory=dict)

    @property
    def purged(self) -> int:
        return sum(c.purged for c in self.chains.values())

    @property
    def kept_in_window(self) -> int:
        return sum(c.kept_in_window for c in self.chains.values())

    @property
    def legacy_kept(self) -> int:
        return sum(c.legacy_kept for c in self.chains.values())
