"""The case record: tamper-evident evidence, outbox and rule checkpoints (see store.py)."""

from tagwatch.record.model import (
    Batch,
    Entry,
    OutboxItem,
    OutboxRow,
    Problem,
    RecordError,
    RecordUnavailable,
)
from tagwatch.record.store import Record

__all__ = [
    "Batch",
    "Entry",
    "OutboxItem",
    "OutboxRow",
    "Problem",
    "Record",
    "RecordError",
    "RecordUnavailable",
]
