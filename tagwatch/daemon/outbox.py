"""Publishes the record's pending `mqtt` outbox rows, and the daemon's transient messages.

Alert records and tag commands are committed as outbox rows with their batch; this task
publishes every pending row (QoS 1, in row order) and marks it done once the broker has
acknowledged it. After a crash between commit and publish the rows are still pending,
so a restart publishes them first. The notification dispatcher gets a view of the record
without these rows (`NotifyView`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from tagwatch.daemon.effects import MQTT
from tagwatch.ingest.mqtt import Backoff, MqttConnection, PacketTooLarge
from tagwatch.record import OutboxRow, Record, RecordError

log = structlog.get_logger("tagwatch.daemon.outbox")
_SCAN = 1000  # rows read per pass


class NotifyView:
    """The record as the dispatcher sees it: no mqtt rows; failed attempts counted."""

    def __init__(self, record: Record, on_failed_attempt: Callable[[str], None]) -> None:
        self._record = record
        self._channels: dict[int, str] = {}
        self._on_failed_attempt = on_failed_attempt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._record, name)

    def outbox_due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        rows = [r for r in self._record.outbox_due(now, limit + _SCAN) if r.channel != MQTT]
        for row in rows:
            self._channels[row.id] = row.channel
        return rows[:limit]

    def outbox_retry(self, row_id: int, not_before: float, error: str) -> None:
        self._record.outbox_retry(row_id, not_before, error)
        self._on_failed_attempt(self._channels.get(row_id, "sms"))

    def outbox_failed(self, row_id: int, error: str) -> None:
        self._record.outbox_failed(row_id, error)
        self._on_failed_attempt(self._channels.pop(row_id, "sms"))

    def outbox_done(self, row_id: int, result: dict) -> None:
        self._record.outbox_done(row_id, result)
        self._channels.pop(row_id, None)


class Publisher:
    def __init__(
        self,
        record: Record,
        conn: MqttConnection,
        on_too_large: Callable[[], None] = lambda: None,
        may_send: Callable[[], bool] = lambda: True,
    ) -> None:
        self.record = record
        self.conn = conn
        self.on_too_large = on_too_large
        # asked again just before a burst goes out (cluster mode: the leases still
        # confirmed): a process stopped after reading its rows may wake much later
        self.may_send = may_send
        self.wake = asyncio.Event()
        self.transient: deque[tuple[str, bytes]] = deque()
        self._backoff = Backoff(0.2, 5.0)

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        self.transient.extend(messages)
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not await self.flush():
                self.wake.set()
                await asyncio.sleep(self._backoff.next())
            else:
                self._backoff.reset()

    async def flush(self) -> bool:
        """Publish what is pending; False if something must be tried again."""
        ok = await self._transient()
        try:
            rows = await asyncio.to_thread(self.record.outbox_due, time.time() + 1.0, _SCAN)
        except RecordError as exc:
            log.warning("outbox_read_failed", error=str(exc))
            return False
        rows = sorted((r for r in rows if r.channel == MQTT), key=lambda r: r.id)
        if rows:
            ok = await self._rows(rows) and ok
        return ok and len(rows) < _SCAN

    async def _transient(self) -> bool:
        items = list(self.transient)
        self.transient.clear()
        if not items:
            return True
        results = await asyncio.gather(
            *(self.conn.publish(t, p, qos=1) for t, p in items), return_exceptions=True
        )
        self._too_large(results)
        failed = [
            item
            for item, r in zip(items, results, strict=True)
            if isinstance(r, BaseException) and not isinstance(r, PacketTooLarge)
        ]
        self.transient.extendleft(reversed(failed))
        return not failed

    async def _rows(self, rows: list[OutboxRow]) -> bool:
        if not self.may_send():
            return False  # left pending, for whoever serves their partitions
        # paho sends in call order, so gathering keeps the rows' order on the wire
        results = await asyncio.gather(
            *(self.conn.publish(r.body["topic"], r.body["payload"].encode(), qos=1) for r in rows),
            return_exceptions=True,
        )
        # A row too large for the broker is never sent: it stays in the record, done.
        self._too_large(results)
        done = [
            r.id
            for r, res in zip(rows, results, strict=True)
            if not isinstance(res, BaseException) or isinstance(res, PacketTooLarge)
        ]
        errors = [
            res
            for res in results
            if isinstance(res, BaseException) and not isinstance(res, PacketTooLarge)
        ]
        if errors:
            log.warning("publish_failed", rows=len(errors), error=str(errors[0]))
        try:
            await asyncio.to_thread(self._mark_done, done)
        except RecordError as exc:
            log.warning("outbox_mark_failed", error=str(exc))  # published again later
            return False
        return not errors

    def _too_large(self, results: list[Any]) -> None:
        for res in results:
            if isinstance(res, PacketTooLarge):
                self.on_too_large()
                log.error("publish_too_large", error=str(res), detail="kept in the case record")

    def _mark_done(self, ids: list[int]) -> None:
        # One transaction for the whole burst: one fsync, not one per row.
        self.record.outbox_done_many(ids, {"published": True, "at": time.time()})
