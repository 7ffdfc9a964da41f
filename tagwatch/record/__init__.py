"""The case record: tamper-evident evidence, outbox and rule checkpoints (see store.py)."""

from tagwatch.record.model import (
    Batch,
    ChainPurge,
    Entry,
    Fence,
    Fenced,
    OutboxItem,
    OutboxRow,
    Problem,
    PurgeReport,
    RecordError,
    RecordMissing,
    RecordUnavailable,
    VerifyReport,
)
from tagwatch.record.store import Record

__all__ = [
    "Batch",
    "ChainPurge",
    "Entry",
    "Fence",
    "Fenced",
    "OutboxItem",
    "OutboxRow",
    "Problem",
    "PurgeReport",
    "Record",
    "RecordError",
    "RecordMissing",
    "RecordUnavailable",
    "VerifyReport",
]
