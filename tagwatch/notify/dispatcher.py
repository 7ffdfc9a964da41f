"""Drains the case record's outbox: at-least-once delivery of SMS, calls and webhooks.

- A row is marked done only after the provider accepted it, so a crash or restart
  between send and mark resends it (with the same alert reference in the text); a row
  marked done is never sent again, by this or a later dispatcher on the same record.
- Failures: exponential backoff with equal jitter (base * 2**attempts, capped, then
  between half and all of it); a provider's Retry-After (HTTP 429) is a lower bound
  for that row and pauses its whole channel until then, so a 429 storm is not fed. A
  timeout after the request left is "unknown": resent like a temporary failure.
- After `max_attempts` attempts, or at once for a permanent failure (4xx other than
  408/429), the row is failed and an operators' alert (`delivery.failed`) is handed to
  `on_failure`; the daemon records and publishes it like any other alert.
- Rows of one alert, channel, target and content already sent by this process are
  marked done without sending (a batch re-committed after a crash queues them twice).
- Blocking calls (Twilio, the record) run in threads; `wake` (an asyncio.Event the daemon
  sets after each commit with outbox rows) starts new rows at once, and a poll every
  `poll_s` picks up retries that came due.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from tagwatch.notify.escalation import Escalation
from tagwatch.notify.outcome import SendFailed, Sent
from tagwatch.notify.policy import CALL, POLICE, SMS
from tagwatch.notify.records import failure_alert
from tagwatch.notify.twilio_channel import TwilioChannel
from tagwatch.notify.webhook import PoliceWebhook
from tagwatch.record import OutboxRow, Record

FailureSink = Callable[[dict], Awaitable[None] | None]


@dataclass(frozen=True)
class DispatchSettings:
    # Keep trying for about 45 minutes, never more than 30 s apart, so a delivery goes
    # out within half a minute of an outage ending: with 8 attempts doubling to 5
    # minutes, a 2-minute outage cost up to 2 more minutes and a slightly longer
    # one failed the SMS for good. Police escalation runs meanwhile (ack_timeout_s).
    max_attempts: int = 120
    base_delay_s: float = 2.0
    max_delay_s: float = 30.0
    poll_s: float = 1.0
    batch: int = 100
    concurrency: int = 8
    status_callback_url: str | None = None  # public URL of inbound.status_callback


class Dispatcher:
    def __init__(
        self,
        record: Record,
        *,
        twilio: TwilioChannel | None,
        police: PoliceWebhook | None,
        on_failure: FailureSink,
        settings: DispatchSettings = DispatchSettings(),
        escalation: Escalation | None = None,
        wake: asyncio.Event | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        may_send: Callable[[], bool] = lambda: True,
    ) -> None:
        self.record, self.twilio, self.police = record, twilio, police
        self.on_failure, self.settings, self.escalation = on_failure, settings, escalation
        self.wake = wake or asyncio.Event()
        self.clock, self.rng = clock, rng or random.Random()
        # asked again just before each send (cluster mode: the leases still confirmed):
        # a process stopped after reading its rows may wake much later
        self.may_send = may_send
        self._inflight: dict[int, asyncio.Task] = {}
        self._paused: dict[str, float] = {}  # channel -> not before (Retry-After)
        self._sent_keys: set[tuple] = set()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._stopping = False

    # --- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Until stop(): start due rows, then wait for a wake-up or the poll interval."""
        while not self._stopping:
            self.wake.clear()  # before reading: a commit during the read sets it again
            await self.start_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self._wait_s())
        await self.idle()

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()

    async def settled(self, timeout: float) -> bool:
        """Wait, at most `timeout` s, for the rows being sent now (started and not yet
        marked done or retried) to end; whether they did."""
        tasks = list(self._inflight.values())
        if not tasks:
            return True
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    async def idle(self) -> None:
        """Wait for every send in flight to finish."""
        while self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def start_due(self) -> int:
        """Start a task for each due row not already in flight; returns how many."""
        now = self.clock()
        rows = await asyncio.to_thread(self.record.outbox_due, now, self.settings.batch)
        started = 0
        for row in rows:
            if row.id in self._inflight or self._paused.get(row.channel, 0.0) > now:
                continue
            self._inflight[row.id] = asyncio.create_task(self._deliver(row))
            started += 1
        return started

    def _wait_s(self) -> float:
        now = self.clock()
        pauses = [t - now for t in self._paused.values() if t > now]
        return max(0.01, min([self.settings.poll_s, *pauses]))

    # --- one row -----------------------------------------------------------------

    async def _deliver(self, row: OutboxRow) -> None:
        try:
            async with self._slots:
                if not self.may_send():
                    return  # left pending, for whoever serves its partition
                key = _content_key(row)
                if key in self._sent_keys:
                    await self._done(row, {"duplicate": True})
                    return
                try:
                    sent = await self._send(row)
                except SendFailed as failed:
                    await self._failed(row, failed)
                except Exception as exc:  # a bug in one row must not stop the others
                    await self._failed(row, SendFailed("retry", f"{type(exc).__name__}: {exc}"))
                else:
                    self._sent_keys.add(key)
                    await self._done(row, sent.result)
        finally:
            self._inflight.pop(row.id, None)
            self.wake.set()  # a finished row may unblock others (pause over, slot free)

    async def _send(self, row: OutboxRow) -> Sent:
        if row.channel == SMS:
            twilio = self._twilio(row)
            url = self._status_url(row)
            return await asyncio.to_thread(twilio.send_sms, row.target, row.body["text"], url)
        if row.channel == CALL:
            twilio = self._twilio(row)
            language = row.body.get("language", "en-GB")
            url = self._status_url(row)
            return await asyncio.to_thread(twilio.call, row.target, row.body["text"], language, url)
        if row.channel == POLICE:
            if self.police is None:
                raise SendFailed("permanent", "no [notify.police] webhook configured")
            record = await asyncio.to_thread(self._police_record, row)
            return await self.police.post(record, int(row.body.get("level", 0)))
        raise SendFailed("permanent", f"outbox row {row.id}: unknown channel {row.channel!r}")

    def _twilio(self, row: OutboxRow) -> TwilioChannel:
        if self.twilio is None:
            raise SendFailed("permanent", f"{row.channel}: no [notify.twilio] configured")
        return self.twilio

    def _status_url(self, row: OutboxRow) -> str | None:
        base = self.settings.status_callback_url
        if not base:
            return None
        query = urlencode({"alert": row.alert_id, "case": row.body.get("case", ""), "row": row.id})
        return f"{base}{'&' if '?' in base else '?'}{query}"

    def _police_record(self, row: OutboxRow) -> dict:
        """The alert record the police item refers to, read back from the case record."""
        bodies = [
            e["body"] for e in self.record.alert_history(row.alert_id) if e["kind"] == "alert"
        ]
        want = (row.body.get("state"), row.body.get("raised"))
        match = [b for b in bodies if (b.get("state"), b.get("raised")) == want]
        if not match:
            raise SendFailed(
                "retry",
                f"outbox row {row.id}: alert {row.alert_id} "
                f"({want[0]} raised {want[1]}) is not in the case record",
            )
        return match[-1]

    async def _done(self, row: OutboxRow, result: dict) -> None:
        now = self.clock()
        result = {**result, "at": now, "attempt": row.attempts + 1}
        await asyncio.to_thread(self.record.outbox_done, row.id, result)
        if row.channel == SMS and self.escalation is not None and "sid" in result:
            self.escalation.sms_accepted(row.alert_id, now)

    async def _failed(self, row: OutboxRow, failed: SendFailed) -> None:
        now, attempt = self.clock(), row.attempts + 1
        error = f"attempt {attempt}: {failed.kind}: {failed.detail}"
        if failed.kind == "permanent" or attempt >= self.settings.max_attempts:
            await asyncio.to_thread(self.record.outbox_failed, row.id, error)
            await self._emit(
                failure_alert(
                    row.alert_id,
                    row.channel,
                    row.id,
                    row.body.get("case", ""),
                    row.body.get("tag"),
                    row.body.get("victim"),
                    f"{attempt} attempt(s), last: {failed.kind}: {failed.detail}",
                    now,
                )
            )
            return
        delay = self.backoff(row.attempts)
        if failed.retry_after is not None:
            delay = max(delay, failed.retry_after)
            self._paused[row.channel] = max(
                self._paused.get(row.channel, 0.0), now + failed.retry_after
            )
        await asyncio.to_thread(self.record.outbox_retry, row.id, now + delay, error)

    def backoff(self, attempts: int) -> float:
        """Delay before the next try after `attempts` failed ones: equal jitter."""
        full = min(self.settings.max_delay_s, self.settings.base_delay_s * 2**attempts)
        return full / 2 + self.rng.random() * full / 2

    async def _emit(self, alert: dict) -> None:
        result = self.on_failure(alert)
        if inspect.isawaitable(result):
            await result


def _content_key(row: OutboxRow) -> tuple:
    if row.channel == POLICE:
        return (
            row.alert_id,
            POLICE,
            row.body.get("state"),
            row.body.get("raised"),
            row.body.get("level"),
        )
    return (row.alert_id, row.channel, row.target, row.body.get("text"))
