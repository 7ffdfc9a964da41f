"""Data retention: purge fix bodies older than `[record] retention_days`, daily.

Fixes within `evidence_window_h` of an alert of their case are kept: they are
the evidence for that alert. The purge is recorded in each chain it touches and
the chains still verify (see tagwatch/record/retention.py).
"""

from __future__ import annotations

import asyncio

import structlog

from tagwatch.record import PurgeReport, Record, RecordError

log = structlog.get_logger("tagwatch.retention")
DAY_S = 86_400.0


def purge_now(record: Record, days: float, window_h: float, now: float) -> PurgeReport:
    return record.purge(now - days * DAY_S, window_h * 3600.0, now)


async def purge_daily(record: Record, days: float, window_h: float, clock) -> None:
    """Purge at start and then once a day; an unavailable record is tried next time."""
    while True:
        try:
            report = await asyncio.to_thread(purge_now, record, days, window_h, clock())
            log.info(
                "retention_purge",
                purged=report.purged,
                kept=report.kept_in_window,
                older_than_days=days,
            )
        except RecordError as exc:
            log.warning("retention_purge_failed", error=str(exc), detail="tried again tomorrow")
        await asyncio.sleep(DAY_S)
