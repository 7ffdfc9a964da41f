"""The Daemon: ingest, pipeline, one commit per batch, acknowledgement after it, publish.

The Daemon class is in three modules: this one holds the MQTT serve/ingest/commit loop
and the ticks; `wiring.py` the feed, its HTTP routes, operator actions, health, metrics
and the dispatcher; `caseset.py` case-set loading, reload and signals. `settings.py`
makes the broker settings from the config.

Acknowledgement after commit: paho runs with manual_ack (tagwatch.ingest.mqtt). A batch's
messages are acknowledged only once `Record.commit` of its Batch has returned; the alert
records and commands are outbox rows of that same transaction, published afterwards by
the Publisher. A crash before the commit: nothing acknowledged, the broker redelivers
everything and the checkpoints are those of the previous batch. A crash after it: the
redelivered messages are duplicates for the restored rule state, and the pending outbox
rows are published at the next start.

Units of work (a batch, a tick, a delivery failure) hold `self._work` from the pipeline
call to the end of the commit, so checkpoints and entries are committed in the order the
pipeline made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Sequence

import structlog

from tagwatch import signing
from tagwatch.config import Config
from tagwatch.daemon import http
from tagwatch.daemon.anchoring import anchor_every
from tagwatch.daemon.anchoring import checkpoint as anchor_checkpoint
from tagwatch.daemon.caseset import CaseReload, policy_settings, victim_phones
from tagwatch.daemon.effects import ESCALATION_KEY, LEDGER_KEY, Effects, EffectsBuilder, Notify
from tagwatch.daemon.metrics import Metrics
from tagwatch.daemon.outbox import Publisher
from tagwatch.daemon.retention import purge_daily
from tagwatch.daemon.settings import anchor_writer
from tagwatch.daemon.wiring import Wiring
from tagwatch.feed.events import EventHub
from tagwatch.ingest.batcher import Batcher, RateGate, isolate
from tagwatch.ingest.mqtt import (
    ENTER,
    LIMITED,
    Backoff,
    BrokerSettings,
    Message,
    MqttConnection,
    connect_unless,
)
from tagwatch.ingest.ratelimit import TokenBuckets
from tagwatch.notify.escalation import Escalation, EscalationSettings
from tagwatch.notify.policy import SmsLedger, degraded_notices
from tagwatch.pipeline import Inbound, Pipeline, Result, fault_marker
from tagwatch.record import Batch, Record, RecordError, RecordUnavailable
from tagwatch.wire import Topics, status_message
from zones import Case, ZoneSet

log = structlog.get_logger("tagwatch.daemon")
_ACK_POLL_LIMIT = 1000
DATA_ATTEMPTS = 3  # a commit refused this often, not as an outage, fails on its data


class Daemon(Wiring, CaseReload):
    def __init__(
        self,
        config: Config,
        record: Record,
        zoneset: ZoneSet,
        cases: dict[str, Case],
        cases_refused: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.record = record
        self.cases = cases
        self.cases_refused = dict(cases_refused or {})  # file -> error, at the last load
        self.victim_phones = victim_phones(cases)  # updated in place on reload
        self.topics = Topics(config.broker.topic_prefix, config.ingest.owntracks_prefix)
        self.event_clock = config.ingest.clock == "event"
        self.pipeline = Pipeline(
            zoneset,
            config.rules,
            self.topics,
            self.event_clock,
            keys=signing.keys_from_env(os.environ),
        )
        self.pipeline.fault = fault_marker(os.environ)  # tests only; else FaultRefused
        self.metrics = Metrics()
        self.hub = EventHub()  # alert records to the dashboards' event streams
        self.instance = f"{config.broker.client_id}@{socket.gethostname()}:{os.getpid()}"
        self.since = time.time()
        self.notify = Notify(
            policy_settings(config, cases),
            SmsLedger(),
            Escalation(EscalationSettings(ack_timeout_s=config.rules.ack_timeout_s)),
        )
        self.effects = EffectsBuilder(
            self.topics,
            self.notify,
            lambda: self.cases,
            self._tag_cases,
        )
        self.gate = self._new_gate()
        self.batcher: Batcher[Message] = self._new_batcher(self.gate)
        self.stopping = asyncio.Event()
        self._cases_loaded = asyncio.Event()  # set by a reload that loaded cases
        self.dispatch_wake = asyncio.Event()
        self.record_down: str | None = None
        self.conn: MqttConnection | None = None
        self.publisher: Publisher | None = None
        self.dispatcher = None  # SMS, calls and webhooks, while running (with Twilio or police)
        self._work = asyncio.Lock()
        self._acked_seen: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._reloading: asyncio.Task | None = None
        self._serving = False  # pending outbox rows flushed, ingest running
        self._failed_batches: deque[float] = deque()  # monotonic times of failed batches

    def _may_send(self) -> bool:
        """Whether the outbox may be sent from here now (cluster mode says more)."""
        return True

    def _new_gate(self) -> RateGate | None:
        """The per-tag rate limit at a session's door, so the excess never enters a batch."""
        limit = self.config.ingest.rate_limit
        limited = self.metrics.rejected.labels(reason="rate_limited")
        return RateGate(TokenBuckets(*limit), limited.inc) if limit else None

    def _new_batcher(self, gate: RateGate | None) -> Batcher[Message]:
        return Batcher(
            self.config.ingest.batch_max,
            self.config.ingest.batch_wait_ms / 1000.0,
            gate,
            # Fair batching (a tag's backlog never fills a batch others wait for) on the
            # receiving clock only: on the event clock the order across tags is the clock
            # (a tag held back would look silent), so arrival order is kept there.
            key=_topic if gate is not None else None,
        )

    # ---- state ---------------------------------------------------------------------

    def _device_position(self, device: str) -> tuple[float, float, float] | None:
        """(ts, lon, lat) of a victim device's last fix, from the engine (feed thread)."""
        state = self.pipeline.engine.devices.get(device)
        return None if state is None else (state.ts, state.lon, state.lat)

    def _tag_cases(self, tag: str) -> list[str]:
        return [case for case, _rules in self.pipeline.engine.tag_cases.get(tag, ())]

    def restore(self) -> None:
        points = self.record.checkpoints()
        self._restore_notify(points)
        self.pipeline.restore(points)
        self._acked_seen = {
            a["id"] for a in self.record.latest_alerts("acknowledged", _ACK_POLL_LIMIT)
        }
        self._stopped_elsewhere(list(self.notify.escalation.pending()))
        log.info(
            "restored", checkpoints=len(points), escalations=len(self.notify.escalation.pending())
        )

    def _restore_notify(self, points: dict[str, bytes]) -> None:
        """The SMS ledger and escalation state, taken out of `points`."""
        if LEDGER_KEY in points:
            self.notify.ledger = SmsLedger.from_bytes(points.pop(LEDGER_KEY))
        if ESCALATION_KEY in points:
            self.notify.escalation = Escalation.from_bytes(
                points.pop(ESCALATION_KEY), self.notify.escalation.settings
            )

    def _stopped_elsewhere(self, alert_ids: list[str]) -> None:
        """Stop the clocks of these alerts if they were acknowledged or resolved while
        no clock of theirs ran here (the CLI while down, another worker): blocking reads."""
        for alert_id in alert_ids:
            history = self.record.alert_history(alert_id)
            bodies = [e["body"] for e in history if e["kind"] == "alert"]
            if bodies and bodies[-1].get("state") in ("acknowledged", "resolved"):
                self.notify.escalation.observe(bodies[-1])

    # ---- the run -------------------------------------------------------------------

    async def run(self, settings: BrokerSettings) -> None:
        self.metrics.up.set(1)
        self._signals()
        server, http_task = await http.serve(
            self._feed_app(), self.config.feed.host, self.config.feed.port
        )
        log.info("http_listening", listen=self.config.feed.listen)
        try:
            await self._connected(settings)
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(http_task, 5.0)

    async def _connected(self, settings: BrokerSettings) -> None:
        if not await self._cases_in_force():
            return
        status = self.topics.status
        self.conn = MqttConnection(
            settings,
            [(topic, 1) for topic in self.topics.fix_filters],
            will=(status, status_message("offline", self.instance, self.since)),
            online=(status, lambda: status_message("online", self.instance, time.time())),
            door=self.gate,
        )
        if not await connect_unless(self.conn, self.stopping):
            return
        try:
            await self._serve(self.conn)
        finally:
            await self.conn.__aexit__(None, None, None)
            log.info("offline_published", topic=status)

    async def _serve(self, conn: MqttConnection) -> None:
        self.publisher = Publisher(
            self.record,
            conn,
            on_too_large=self.metrics.publish_too_large.inc,
            may_send=self._may_send,
        )
        await self.publisher.flush()  # rows left by a previous run go out first
        dispatcher = self.dispatcher = self._dispatcher()
        self._tasks = [
            asyncio.create_task(self.batcher.pump(conn.bursts()), name="pump"),
            asyncio.create_task(self.publisher.run(), name="publisher"),
            asyncio.create_task(self._ticker(), name="ticker"),
        ]
        if dispatcher is not None:
            self._tasks.append(asyncio.create_task(self._supervise(dispatcher), name="notify"))
        keep = self.config.record
        anchors = anchor_writer(keep)
        if anchors is not None:
            every = anchor_every(self.record, anchors, keep.anchor_interval_s)
            self._tasks.append(asyncio.create_task(every, name="anchor"))
        if keep.retention_days > 0:
            purge = purge_daily(self.record, keep.retention_days, keep.evidence_window_h, time.time)
            self._tasks.append(asyncio.create_task(purge, name="retention"))
        log.info("running", instance=self.instance)
        self._serving = True
        try:
            await self._ingest()
        finally:
            log.info("draining")
            if dispatcher is not None:
                dispatcher.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.publisher.flush(), 10.0)
            if anchors is not None:  # the last heads of this run, anchored
                await asyncio.to_thread(anchor_checkpoint, self.record, anchors)

    async def _ingest(self) -> None:
        while not self.stopping.is_set():
            batch = await self.batcher.next_batch(self.stopping)
            if self.gate is not None and self.gate.waiting:
                await self._rate_limited(self.gate.take())
            if batch:
                await self._handle(batch)

    async def _rate_limited(self, reported: list[Message], gate: RateGate | None = None) -> None:
        """Messages over their tag's rate (DESIGN 3.2 rate_limited) are kept out of the
        batches by the gate: the connection acknowledges and counts them as they arrive,
        except one per topic per REPORT_S, recorded and published here as a rejection
        (and counted with it)."""
        buckets = (gate or self.gate).buckets  # type: ignore[union-attr]
        async with self._work:
            now = time.time()
            result = Result(rejected=[self.pipeline.rate_limited(m, buckets) for m in reported])
            fx = self.effects.from_result(result, {}, now)
            await self._commit(fx.batch)
        await self._acknowledged(reported, fx)

    # ---- units of work -------------------------------------------------------------

    async def _handle(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        failures = await isolate(messages, self._handle_piece, self._set_aside)
        if failures:
            self.metrics.batch_failures.inc(failures)
            self._failed_batches.append(time.monotonic())
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _handle_piece(self, messages: Sequence[Message]) -> None:
        """One unit of work: pipeline, effects, commit, then acknowledge and publish. When
        anything before the commit returns raises, it is undone and the error re-raised:
        `isolate` then splits the batch to set the failing message aside (DESIGN 3.2)."""
        async with self._work:
            now = time.time()
            notify = None
            try:
                # A Message has the fields of an Inbound (topic, payload, received).
                result = self.pipeline.process(messages, raised=now)
                notify = self._notify_state() if result.records else None
                fx = self.effects.from_result(result, self.pipeline.checkpoints(), now)
                await self._commit(fx.batch)
            except Exception:
                log.exception(
                    "batch_failed",
                    messages=len(messages),
                    detail="undone; split to set the failing message aside",
                )
                await self._undo(notify)
                raise
        await self._acknowledged(messages, fx)

    async def ingest_traccar(self, tag: str, payload: bytes) -> tuple[int, dict]:
        """A fix forwarded by Traccar (POST /ingest/traccar): handled as a message on the
        tag's fix topic, one unit of work of its own; answered once committed. (status,
        body): 200 accepted or a duplicate; 422 rejected, with the reason; 503 while the
        daemon is not serving."""
        if not self._serving:
            return 503, {"error": "not ready: the daemon is not serving yet"}
        inbound = Inbound(self.topics.tag_fix(tag), payload, time.time())
        verdict = ENTER if self.gate is None else self.gate.verdict(inbound.topic, inbound.received)
        if verdict != ENTER:
            return await self._traccar_limited(inbound, record=verdict == LIMITED)
        async with self._work:
            now = time.time()
            notify = None
            try:
                result = self.pipeline.process([inbound], raised=now)
                notify = self._notify_state() if result.records else None
                fx = self.effects.from_result(result, self.pipeline.checkpoints(), now)
                await self._commit(fx.batch)
            except Exception:
                log.exception("traccar_failed", detail="undone; Traccar retries")
                await self._undo(notify)
                raise
        self._after_commit(fx)
        if result.rejected:
            r = result.rejected[0].rejection
            return 422, {"error": f"{r.reason}: {r.detail}"}
        return 200, {"accepted": len(result.accepted), "duplicates": result.duplicates}

    async def _traccar_limited(self, inbound: Inbound, record: bool) -> tuple[int, dict]:
        """A Traccar fix over its tag's rate: the MQTT gate of the same fix topic decided,
        and the excess is handled as there (counted; one per REPORT_S, `record`, recorded
        and published); 429, so that Traccar retries it later."""
        rejected = self.pipeline.rate_limited(inbound, self.gate.buckets)  # type: ignore[union-attr]
        if record:
            async with self._work:
                fx = self.effects.from_result(Result(rejected=[rejected]), {}, time.time())
                await self._commit(fx.batch)
            self._after_commit(fx)  # counts it in tagwatch_rejected_total too
        else:
            self.metrics.rejected.labels(reason=rejected.rejection.reason).inc()
        return 429, {"error": f"{rejected.rejection.reason}: {rejected.rejection.detail}"}

    async def _set_aside(self, msg: Message, error: Exception) -> None:
        """Reject a message whose handling fails on its own (internal_error), and ack it.

        If even its rejection (a blanked payload and a digest) is refused, the record is
        refusing every write (permissions, a full disk), not this message's data: it is
        never acknowledged unrecorded. It is handled again from the start after a backoff,
        as through an outage, until it is committed or its rejection is."""
        backoff = Backoff(0.5, 10.0)
        while not await self._rejected(msg, error):
            await asyncio.sleep(backoff.next())
            try:
                await self._handle_piece([msg])
                return
            except Exception as exc:
                error = exc

    async def _rejected(self, msg: Message, error: Exception) -> bool:
        """Commit `msg`'s internal_error rejection and acknowledge it; False if the
        record refused the rejection (nothing acknowledged)."""
        async with self._work:
            now = time.time()
            result = self.pipeline.set_aside(msg, error)
            detail = result.rejected[0].rejection.detail
            log.error("message_set_aside", source=result.rejected[0].source,
                      error=type(error).__name__, detail=detail)
            try:
                fx = self.effects.from_result(result, {}, now)
            except Exception:  # building its rejection fails: logged, never a wedge
                log.exception("set_aside_unrecorded", detail=detail)
                fx = Effects()
            else:
                try:
                    await self._commit(fx.batch)
                except RecordError as exc:
                    log.error("set_aside_refused", error=str(exc),
                              detail="the record refuses writes; held, not acknowledged")
                    return False
        await self._acknowledged([msg], fx)
        return True

    async def _acknowledged(self, messages: Sequence[Message], fx: Effects) -> None:
        """After the commit: acknowledge, count, publish. Never raises: the batch is
        committed, and a retry would handle its messages twice."""
        try:
            await self.conn.ack_many(messages)  # type: ignore[union-attr]
            self._after_commit(fx)
        except Exception:
            log.exception("after_commit_failed", messages=len(messages))

    def _notify_state(self) -> tuple[bytes, bytes]:
        """The SMS ledger and escalation state, to undo a failed batch's alerts with."""
        return self.notify.ledger.to_bytes(), self.notify.escalation.to_bytes()

    async def _undo(self, notify: tuple[bytes, bytes] | None) -> None:
        """Back to the last committed state, as a restart would find it: the rule state
        from the record's checkpoints (all of them: this costs what a restart's restore
        does, and only a failing batch pays it), and the notification state from before."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                points = await asyncio.to_thread(self.record.checkpoints)
                break
            except RecordError as exc:
                log.error("undo_waiting", error=str(exc), detail="retrying the checkpoint read")
                await asyncio.sleep(backoff.next())
        points.pop(LEDGER_KEY, None)
        points.pop(ESCALATION_KEY, None)
        self.pipeline.reset(points)
        if notify is not None:
            self.notify.ledger = SmsLedger.from_bytes(notify[0])
            # in place: the dispatcher and the Twilio routes hold this object
            escalation = self.notify.escalation
            escalation.take_state(Escalation.from_bytes(notify[1], escalation.settings))

    async def _ticker(self) -> None:
        tick_s = self.config.ingest.tick_s
        while True:
            await asyncio.sleep(tick_s)
            try:
                await self._tick()
                await self._poll_acks()
                await self._gauges()
            except Exception:
                log.exception("tick_failed")

    async def _tick(self) -> None:
        async with self._work:
            now = time.time()
            # On the event clock the fixes themselves move the watchdogs (as in replay).
            result = Result() if self.event_clock else self.pipeline.tick(now, raised=now)
            fx = self.effects.from_result(result, self.pipeline.checkpoints(), now)
            notices = degraded_notices(now, self.cases, self.notify.settings, self.notify.ledger)
            if notices:  # protection notices due (notify/policy.py), with the ledger
                fx.batch.outbox += notices
                fx.batch.checkpoints[LEDGER_KEY] = self.notify.ledger.to_bytes()
            escalated = self.notify.escalation.tick(now)
            if escalated:
                more = self.effects.from_records(escalated, now)
                fx.batch.entries += more.batch.entries
                fx.batch.outbox += more.batch.outbox
                fx.batch.checkpoints.update(more.batch.checkpoints)
                fx.alert_types.update(more.alert_types)
                fx.records += more.records
            if not fx.empty:
                await self._commit(fx.batch)
        self._after_commit(fx)

    async def record_alerts(self, records: list[dict]) -> None:
        """Record, publish and run the policy on alert records made outside the pipeline
        (the dispatcher's delivery.failed alerts)."""
        async with self._work:
            fx = self.effects.from_records(records, time.time())
            await self._commit(fx.batch)
        self._after_commit(fx)

    async def _commit(self, batch: Batch) -> None:
        """Commit, retrying with backoff: through an outage (RecordUnavailable) until it
        succeeds, the batch kept meanwhile. Any other RecordError DATA_ATTEMPTS times is
        the batch's own data failing, which no wait cures: raised, so that `isolate` sets
        the failing message aside instead of holding ingest for ever."""
        backoff = Backoff(0.2, 5.0)
        refused = 0
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self.record.commit, batch, time.time())
            except RecordError as exc:
                self.metrics.write_errors.inc()
                if not isinstance(exc, RecordUnavailable):
                    refused += 1
                    if refused >= DATA_ATTEMPTS:
                        log.error("commit_refused", record=self.record.label, error=str(exc),
                                  attempts=refused, detail="raised to set the batch aside")
                        raise
                if self.record_down is None:
                    self.record_down = str(exc)
                    self.metrics.record_available.set(0)
                    log.error(
                        "record_unavailable",
                        record=self.record.label,
                        error=str(exc),
                        detail="holding the batch unacknowledged; retrying",
                    )
                await asyncio.sleep(backoff.next())
                continue
            self.metrics.write_seconds.observe(time.perf_counter() - started)
            if self.record_down is not None:
                log.warning(
                    "record_available",
                    record=self.record.label,
                    detail="writing again after an outage",
                )
                self.record_down = None
                self.metrics.record_available.set(1)
            return

    def _after_commit(self, fx: Effects) -> None:
        m = self.metrics
        m.fixes.inc(fx.fixes)
        m.duplicates.inc(fx.duplicates)
        for kind, n in fx.ignored.items():
            m.owntracks_ignored.labels(type=kind).inc(n)
        for reason, n in fx.rejected_reasons.items():
            m.rejected.labels(reason=reason).inc(n)
        for kind, n in fx.alert_types.items():
            m.alerts.labels(type=kind).inc(n)
        if fx.rejected_reasons:
            log.info("rejected", by_reason=dict(fx.rejected_reasons))
        for record in fx.records:
            log.info(
                "alert",
                alert=record["id"],
                type=record["type"],
                state=record["state"],
                severity=record["severity"],
                case=record["case"],
            )
            self.hub.publish(record)
        if self.publisher is not None and (fx.rejected or fx.has_mqtt):
            self.publisher.send(fx.rejected)
        if fx.has_deliveries:
            self.dispatch_wake.set()

    async def _poll_acks(self) -> None:
        """Acks written by another process (the CLI) stop escalation here too."""
        if not self.notify.escalation.pending():
            return
        try:
            acked = await asyncio.to_thread(
                self.record.latest_alerts, "acknowledged", _ACK_POLL_LIMIT
            )
        except RecordError:
            return
        for alert in acked:
            if alert["id"] not in self._acked_seen:
                self._acked_seen.add(alert["id"])
                self.notify.escalation.observe(alert)
                log.info("acknowledged_elsewhere", alert=alert["id"])

    async def _gauges(self) -> None:
        self.refresh_metrics()
        with contextlib.suppress(RecordError):
            depth = await asyncio.to_thread(self.record.outbox_depth)
            self.metrics.outbox_depth.set(depth)
        self.metrics.tags_silent.set(self._silent_tags(time.time()))

    def _silent_tags(self, now: float) -> int:
        engine = self.pipeline.engine
        states = getattr(engine, "tags", {})
        limit = now - self.config.rules.no_comms_s
        silent = 0
        for tag in engine.tag_cases:
            last = getattr(states.get(tag), "last_msg_ts", None)
            if last is None or last < limit:
                silent += 1
        return silent


def _topic(msg: Message) -> str:
    """A message's key for fair batching: its topic (one tag or victim device)."""
    return msg.topic
