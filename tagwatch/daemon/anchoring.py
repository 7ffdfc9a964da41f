"""Anchoring: a signed checkpoint of every chain head, every `[record] anchor_interval_s`.

Off the ingest path: one short read of `chain_heads` per interval in a worker thread, and
one append to the anchor file (tagwatch/record/anchor.py). A last checkpoint at a clean
stop covers everything written before it.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from tagwatch.record import Record, RecordError
from tagwatch.record.anchor import AnchorWriter, anchor_once

log = structlog.get_logger("tagwatch.anchor")


def checkpoint(record: Record, writer: AnchorWriter) -> bool:
    """One checkpoint now; False (and logged) when it could not be written."""
    try:
        line = anchor_once(writer, record.read, time.time())
    except RecordError as exc:  # AnchorError included
        log.error("anchor_failed", anchor_file=str(writer.path), error=str(exc),
                  detail="chain heads not anchored; tried again next interval")
        return False
    if line is not None:
        log.debug("anchored", checkpoint=line["n"], chains=len(line["heads"]))
    return True


async def anchor_every(record: Record, writer: AnchorWriter, interval_s: float) -> None:
    """A checkpoint at start, then one per interval, until cancelled."""
    while True:
        await asyncio.to_thread(checkpoint, record, writer)
        await asyncio.sleep(interval_s)
