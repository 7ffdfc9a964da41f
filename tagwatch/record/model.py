"""The case record's value types and errors."""

from __future__ import annotations

from dataclasses import dataclass, field


class RecordError(Exception):
    """Anything wrong with the case record: bad input, bad schema, refused statement."""


class RecordUnavailable(RecordError):
    """The database cannot be reached or is busy right now; retry the same call later.

    The daemon buffers its batch and retries; the next call reconnects.
    """


@dataclass(frozen=True)
class Entry:
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
