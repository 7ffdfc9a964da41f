"""The Daemon: ingest, pipeline, one commit per batch, acknowledgement after it, publish.

Acknowledgement after commit: paho runs with manual_ack (tagwatch.mqtt). A batch's
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
import functools
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tagwatch import signing
from tagwatch.cases import load as load_cases_checked
from tagwatch.config import Config
from tagwatch.daemon import http
from tagwatch.daemon.anchoring import anchor_every
from tagwatch.daemon.anchoring import checkpoint as anchor_checkpoint
from tagwatch.daemon.effects import ESCALATION_KEY, LEDGER_KEY, Effects, EffectsBuilder, Notify
from tagwatch.daemon.ingest import Batcher, RateGate, isolate
from tagwatch.daemon.metrics import Metrics
from tagwatch.daemon.outbox import NotifyView, Publisher
from tagwatch.daemon.retention import purge_daily
from tagwatch.delivery_terms import redact_urls
from tagwatch.feed.actions import resolve
from tagwatch.feed.app import create_app
from tagwatch.feed.cases import cases_view
from tagwatch.feed.events import EventHub
from tagwatch.mqtt import Backoff, BrokerSettings, Message, MqttConnection
from tagwatch.notify.ack import acknowledge
from tagwatch.notify.escalation import Escalation, EscalationSettings
from tagwatch.notify.inbound import TwilioInbound
from tagwatch.notify.policy import PolicySettings, SmsLedger, degraded_notices
from tagwatch.pipeline import FAULT_ENV, Inbound, Pipeline, Result
from tagwatch.ratelimit import TokenBuckets
from tagwatch.record import Batch, Entry, Record, RecordError
from tagwatch.record.anchor import AnchorWriter
from tagwatch.wire import Topics, status_message
from zones import Case, ZoneSet

log = structlog.get_logger("tagwatch.daemon")
_ACK_POLL_LIMIT = 1000
FAILED_WINDOW_S = 300.0  # /readyz says 503 while this many s hold FAILED_LIMIT failed batches
FAILED_LIMIT = 3


class CasesRefused(Exception):
    """Case files refused at start; the message names each file and problem."""


def _status_url(twilio) -> str | None:
    return f"{twilio.public_url}/twilio/status" if twilio and twilio.public_url else None


def victim_phones(cases: dict[str, Case]) -> dict[str, tuple[str, str]]:
    """phone -> (case id, victim id), for victims' SMS replies."""
    return {v.phone: (c.id, v.id) for c in cases.values() for v in c.victims if v.phone}


def json_bytes(record: dict) -> bytes:
    return msgspec.json.encode(record)


@dataclass(frozen=True)
class CaseSet:
    """The cases in force and the case files refused at the last load.

    The rule (DESIGN 3.4): the good files are loaded and swapped in together; a refused
    file is named with its error (file and field, never its content) and the others still
    load. At a reload a refused file keeps the case it held before (`kept`), unless a good
    file now holds that case id; a deleted file's case goes. A missing cases path, or a
    reload that would leave no case at all, is refused whole (CasesRefused) and the cases
    in force stay.
    """

    cases: dict[str, Case]
    refused: dict[str, str] = field(default_factory=dict)  # file -> error
    kept: tuple[str, ...] = ()  # case ids kept from before because their file was refused

    @property
    def zoneset(self) -> ZoneSet:
        return ZoneSet(sorted(self.cases.values(), key=lambda c: (c.source, c.id)))


def load_caseset(path: Path, previous: dict[str, Case] | None = None) -> CaseSet:
    """The good case files of `path`; at a reload, `previous` are the cases in force."""
    try:
        result = load_cases_checked(path)
    except OSError as exc:  # FileNotFoundError: no such file or folder
        raise CasesRefused(str(exc)) from None
    cases = {c.id: c for c in result.cases}
    refused = dict(zip(result.files, result.errors, strict=True))
    kept = []
    for case in (previous or {}).values():
        if case.source in refused and case.id not in cases:
            cases[case.id] = case
            kept.append(case.id)
    if previous and not cases:
        raise CasesRefused(f"{path}: no case would be left; " + "; ".join(refused.values()))
    return CaseSet(cases, refused, tuple(kept))


def log_caseset(caseset: CaseSet, path: Path) -> None:
    """One error line per refused file, a warning per kept case; loud when none is left."""
    for file, error in caseset.refused.items():
        log.error("case_file_refused", file=file, error=error)
    for case_id in caseset.kept:
        source = caseset.cases[case_id].source
        log.warning(
            "case_kept", case=case_id, file=source, detail="its new file is refused; old version"
        )
    if not caseset.cases:
        log.error(
            "no_cases",
            cases=str(path),
            refused=len(caseset.refused),
            detail="not ready and not connected to the broker (it keeps the fixes queued) "
            "until a reload (SIGHUP) loads a case",
        )


def policy_settings(config: Config, cases: dict[str, Case]) -> PolicySettings:
    """Who gets what: the deployment's channels and each case's language and texts."""
    return PolicySettings(
        sms_enabled=config.notify.twilio is not None,
        police_enabled=config.notify.police is not None,
        languages={c.id: c.language for c in cases.values()},
        case_texts={c.id: dict(c.texts) for c in cases.values() if c.texts},
        degraded_notify_s={
            c.id: float(c.rules["degraded_notify_s"])
            for c in cases.values()
            if "degraded_notify_s" in c.rules
        },
        default_degraded_notify_s=config.rules.degraded_notify_s,
    )


# /readyz stays 503 this long after the broker session was lost or taken over.
SESSION_LOST_READY_S = 300.0


class Daemon:
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
        if os.environ.get(FAULT_ENV):  # tests of failing batches only (Pipeline.fault)
            self.pipeline.fault = os.environ[FAULT_ENV].encode()
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
        limit = config.ingest.rate_limit  # at the door, so the excess never enters a batch
        limited = self.metrics.rejected.labels(reason="rate_limited")
        self.gate = RateGate(TokenBuckets(*limit), limited.inc) if limit else None
        self.batcher: Batcher[Message] = Batcher(
            config.ingest.batch_max,
            config.ingest.batch_wait_ms / 1000.0,
            self.gate,
            key=_topic,  # fair batching: a tag's backlog never fills a batch others wait for
        )
        self.stopping = asyncio.Event()
        self._cases_loaded = asyncio.Event()  # set by a reload that loaded cases
        self.dispatch_wake = asyncio.Event()
        self.record_down: str | None = None
        self.conn: MqttConnection | None = None
        self.publisher: Publisher | None = None
        self._work = asyncio.Lock()
        self._acked_seen: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._reloading: asyncio.Task | None = None
        self._serving = False  # pending outbox rows flushed, ingest running
        self._failed_batches: deque[float] = deque()  # monotonic times of failed batches

    # ---- state ---------------------------------------------------------------------

    def _device_position(self, device: str) -> tuple[float, float, float] | None:
        """(ts, lon, lat) of a victim device's last fix, from the engine (feed thread)."""
        state = self.pipeline.engine.devices.get(device)
        return None if state is None else (state.ts, state.lon, state.lat)

    def _tag_cases(self, tag: str) -> list[str]:
        return [case for case, _rules in self.pipeline.engine.tag_cases.get(tag, ())]

    def restore(self) -> None:
        points = self.record.checkpoints()
        if LEDGER_KEY in points:
            self.notify.ledger = SmsLedger.from_bytes(points.pop(LEDGER_KEY))
        if ESCALATION_KEY in points:
            self.notify.escalation = Escalation.from_bytes(
                points.pop(ESCALATION_KEY), self.notify.escalation.settings
            )
        self.pipeline.restore(points)
        self._acked_seen = {
            a["id"] for a in self.record.latest_alerts("acknowledged", _ACK_POLL_LIMIT)
        }
        # Acknowledged or resolved while this daemon was down (the CLI): no clock left.
        for alert_id in self.notify.escalation.pending():
            history = self.record.alert_history(alert_id)
            bodies = [e["body"] for e in history if e["kind"] == "alert"]
            if bodies and bodies[-1].get("state") in ("acknowledged", "resolved"):
                self.notify.escalation.observe(bodies[-1])
        log.info(
            "restored", checkpoints=len(points), escalations=len(self.notify.escalation.pending())
        )

    def _feed_app(self):
        """The operator feed (DESIGN 3.8) with health, readiness and metrics."""
        app = create_app(
            record=self.record,
            zones_provider=lambda: self.pipeline.zoneset,
            users=self.config.feed.users,
            hub=self.hub,
            on_ack=self._acknowledge,
            on_resolve=self._resolve,
            health=self.health,
            metrics=self._metrics_text,
            tile_url=self.config.feed.tile_url,
            default_warn_m=self.config.rules.warn_m,
            device_position=self._device_position,
            sse_max_clients=self.config.feed.sse_max_clients,
            sse_max_per_user=self.config.feed.sse_max_per_user,
            on_traccar=self.ingest_traccar,
            cases_view=lambda: cases_view(
                self.pipeline.engine, self.pipeline.zoneset.cases, time.time()
            ),
        )
        app.router.routes.extend(self._twilio_routes())
        return app

    def _twilio_routes(self) -> list[Route]:
        """Twilio's delivery status callbacks and the victims' SMS replies (signed by
        Twilio, so no bearer token), when [notify.twilio] public_url is set."""
        twilio = self.config.notify.twilio
        if twilio is None or not twilio.public_url:
            return []
        self.inbound = TwilioInbound(
            twilio.auth_token,
            twilio.public_url,
            self.record,
            self.victim_phones,
            escalation=self.notify.escalation,
            on_ack=self._sms_ack(asyncio.get_running_loop()),
        )

        def endpoint(handler):
            async def route(request: Request) -> Response:
                path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                body = await request.body()
                reply = await asyncio.to_thread(
                    handler, request.method, path, dict(request.headers), body
                )
                return Response(reply.body, reply.status, media_type=reply.content_type)

            return route

        return [
            Route("/twilio/status", endpoint(self.inbound.status_callback), methods=["POST"]),
            Route("/twilio/sms", endpoint(self.inbound.sms_reply), methods=["POST"]),
        ]

    def _sms_ack(self, loop: asyncio.AbstractEventLoop):
        """A victim's SMS reply acknowledges as an operator does (committed with the
        escalation state and the reply, then published), from the webhook's thread."""

        def ack(alert_id: str, by: str, note: str, now: float, extra: Sequence[Entry]) -> dict:
            action = self.operator_action("ack", alert_id, by, note, extra)
            return asyncio.run_coroutine_threadsafe(action, loop).result(60)

        return ack

    def _metrics_text(self) -> bytes:
        self.refresh_metrics()
        return self.metrics.render()

    async def _acknowledge(self, alert_id: str, by: str, note: str) -> dict:
        return await self.operator_action("ack", alert_id, by, note)

    async def _resolve(self, alert_id: str, by: str, note: str) -> dict:
        return await self.operator_action("resolve", alert_id, by, note)

    async def operator_action(
        self, action: str, alert_id: str, by: str, note: str, extra: Sequence[Entry] = ()
    ) -> dict:
        """Acknowledge or resolve from the dashboard: the operator's action and the new
        alert record are committed together (who, when, note), then the record goes to
        the dashboards and to MQTT, and an acknowledgement stops the escalation clock.
        An operator's resolve closes the alert record; if the engine's episode goes on
        and changes, its next record reopens the alert with the same id."""
        async with self._work:
            # The escalation state without this alert is committed with the action: after
            # a restart an acknowledged alert does not escalate again.
            state = {ESCALATION_KEY: self.notify.escalation.to_bytes(without=alert_id)}
            if action == "ack":
                write = functools.partial(acknowledge, checkpoints=state, extra=extra)
            else:
                write = functools.partial(resolve, checkpoints=state)
            record = await asyncio.to_thread(write, self.record, alert_id, by, note, time.time())
            self.notify.escalation.observe(record)
            self._acked_seen.add(record["id"])
        log.info("operator_action", action=action, alert=record["id"], by=by)
        self.metrics.alerts.labels(type=record["type"]).inc()
        self.hub.publish(record)
        if self.publisher is not None:
            # Best effort: the record is already in the case record and on the feed.
            self.publisher.send([(self.topics.alerts(record["case"]), json_bytes(record))])
        return record

    def health(self) -> dict:
        """/readyz: ready or why not, and the refused case files by name (not content)."""
        reasons = self.not_ready()
        refused = sorted(self.cases_refused)
        return {"ready": not reasons, "reasons": reasons, "cases_refused": refused}

    def not_ready(self) -> list[str]:
        """Why /readyz says 503, as fixed short codes: no error text (the log has it)."""
        reasons = [] if self._serving else ["starting"]
        if not self.cases:
            reasons.append("no_cases")  # cases_refused names the files; the log says why
        if self.conn is None or not self.conn.ready.is_set():
            reasons.append("broker_disconnected")
        lost_at = self.conn.session_lost_at if self.conn is not None else None
        if lost_at is not None and time.time() - lost_at < SESSION_LOST_READY_S:
            reasons.append("broker_session_lost")
        if self.record_down is not None:
            reasons.append("record_unavailable")
        if self.stopping.is_set():
            reasons.append("stopping")
        failed = self._failed_batches
        while failed and failed[0] < time.monotonic() - FAILED_WINDOW_S:
            failed.popleft()
        if len(failed) >= FAILED_LIMIT:
            # their failing messages were rejected as internal_error; the log says which
            reasons.append("ingest_batches_failing")
        return reasons

    def refresh_metrics(self) -> None:
        conn = self.conn
        if conn is not None:
            self.metrics.broker(conn.ready.is_set(), conn.reconnects, conn.session_lost)
        else:
            self.metrics.broker(False, 0, 0)
        self.metrics.cases(len(self.cases), len(self.cases_refused))
        self.metrics.victims(self.pipeline.engine.victims_by_status())

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
        connect = asyncio.create_task(self.conn.__aenter__())
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not connect.done():
            connect.cancel()
            with contextlib.suppress(BaseException):
                await connect
            return
        connect.result()
        try:
            await self._serve(self.conn)
        finally:
            await self.conn.__aexit__(None, None, None)
            log.info("offline_published", topic=status)

    async def _cases_in_force(self) -> bool:
        """With no case loaded, stay off the broker (its session keeps the fixes queued)
        until a reload loads one; False when stopped meanwhile."""
        while not self.cases:
            reloaded = asyncio.create_task(self._cases_loaded.wait())
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({reloaded, stop}, return_when=asyncio.FIRST_COMPLETED)
            reloaded.cancel()
            stop.cancel()
            self._cases_loaded.clear()
            if self.stopping.is_set():
                return False
        return True

    async def _serve(self, conn: MqttConnection) -> None:
        self.publisher = Publisher(
            self.record, conn, on_too_large=self.metrics.publish_too_large.inc
        )
        await self.publisher.flush()  # rows left by a previous run go out first
        dispatcher = self._dispatcher()
        self._tasks = [
            asyncio.create_task(self.batcher.pump(conn.bursts()), name="pump"),
            asyncio.create_task(self.publisher.run(), name="publisher"),
            asyncio.create_task(self._ticker(), name="ticker"),
        ]
        if dispatcher is not None:
            self._tasks.append(asyncio.create_task(self._supervise(dispatcher), name="notify"))
        keep = self.config.record
        anchors = _anchor_writer(keep)
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

    async def _rate_limited(self, reported: list[Message]) -> None:
        """Messages over their tag's rate (DESIGN 3.2 rate_limited) are kept out of the
        batches by the gate: the connection acknowledges and counts them as they arrive,
        except one per topic per REPORT_S, recorded and published here as a rejection
        (and counted with it)."""
        buckets = self.gate.buckets  # type: ignore[union-attr]
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

    async def _set_aside(self, msg: Message, error: Exception) -> None:
        """Reject a message whose handling fails on its own (internal_error), and ack it."""
        async with self._work:
            now = time.time()
            result = self.pipeline.set_aside(msg, error)
            log.error(
                "message_set_aside",
                source=result.rejected[0].source,
                error=type(error).__name__,
                detail=result.rejected[0].rejection.detail,
            )
            try:
                fx = self.effects.from_result(result, {}, now)
                await self._commit(fx.batch)
            except Exception:  # even its rejection cannot be recorded: logged, never a wedge
                log.exception("set_aside_unrecorded", detail=result.rejected[0].rejection.detail)
                fx = Effects()
        await self._acknowledged([msg], fx)

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
        """Commit, retrying with backoff until it succeeds: the batch is kept meanwhile."""
        backoff = Backoff(0.2, 5.0)
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self.record.commit, batch, time.time())
            except RecordError as exc:
                self.metrics.write_errors.inc()
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

    # ---- notifications -------------------------------------------------------------

    def _dispatcher(self):
        twilio_cfg, police_cfg = self.config.notify.twilio, self.config.notify.police
        if twilio_cfg is None and police_cfg is None:
            return None
        from tagwatch.notify.dispatcher import Dispatcher, DispatchSettings
        from tagwatch.notify.twilio_channel import TwilioChannel
        from tagwatch.notify.webhook import PoliceWebhook

        view = NotifyView(
            self.record, lambda ch: self.metrics.deliveries_failed.labels(channel=ch).inc()
        )
        return Dispatcher(
            view,  # type: ignore[arg-type]
            twilio=TwilioChannel(twilio_cfg) if twilio_cfg else None,
            police=PoliceWebhook(police_cfg) if police_cfg else None,
            on_failure=lambda alert: self.record_alerts([alert]),
            escalation=self.notify.escalation,
            wake=self.dispatch_wake,
            settings=DispatchSettings(status_callback_url=_status_url(twilio_cfg)),
        )

    async def _supervise(self, dispatcher) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                await dispatcher.run()
                return
            except RecordError as exc:
                log.warning("dispatcher_paused", error=str(exc))
            except Exception:
                log.exception("dispatcher_failed")
            await asyncio.sleep(backoff.next())

    # ---- signals -------------------------------------------------------------------

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)

    def _stop(self, name: str) -> None:
        if not self.stopping.is_set():
            log.info("stopping", signal=name)
            self.stopping.set()

    def _reload_soon(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self.reload())

    async def reload(self) -> bool:
        """Reload the cases (CaseSet has the rule) and the tag keys; False when refused."""
        path = self.config.cases.path
        try:
            caseset = await asyncio.to_thread(load_caseset, path, self.cases)
        except CasesRefused as exc:
            log.error(
                "reload_refused",
                cases=str(path),
                error=str(exc),
                detail="keeping the cases loaded before",
            )
            return False
        try:
            keys = signing.keys_from_env(os.environ)
        except signing.KeyFileError as exc:
            log.error("reload_refused", error=str(exc), detail="keeping the cases and keys")
            return False
        cases = caseset.cases
        async with self._work:
            self.pipeline.reload(caseset.zoneset)
            self.pipeline.set_keys(keys)
            self.cases = cases
            self.cases_refused = dict(caseset.refused)
            self.victim_phones.clear()
            self.victim_phones.update(victim_phones(cases))
            self.notify.settings = policy_settings(self.config, cases)
        log_caseset(caseset, path)
        log.info("reloaded", cases=len(cases), refused=len(caseset.refused), path=str(path))
        if cases:
            self._cases_loaded.set()
        return True


def _topic(msg: Message) -> str:
    return msg.topic


def _anchor_writer(keep) -> AnchorWriter | None:
    if keep.anchor_path is None or keep.anchor_key is None:
        log.warning("anchoring_off", detail="no [record] anchor_path: record verify cannot "
                    "prove the chains against someone who can write the database")
        return None
    return AnchorWriter(keep.anchor_path, keep.anchor_key)


def broker_settings(config: Config, url: str | None = None) -> BrokerSettings:
    b = config.broker
    if url is not None:
        return BrokerSettings.from_url(
            url,
            client_id=b.client_id,
            session_expiry_s=b.session_expiry_s,
            keepalive_s=b.keepalive_s,
            max_packet_bytes=b.max_packet_kb * 1024,
        )
    return BrokerSettings(
        host=b.host,
        port=b.port,
        tls=b.tls,
        ca_file=str(b.ca_file) if b.ca_file else None,
        cert_file=str(b.cert_file) if b.cert_file else None,
        key_file=str(b.key_file) if b.key_file else None,
        username=b.username,
        password=b.password,
        client_id=b.client_id,
        session_expiry_s=b.session_expiry_s,
        keepalive_s=b.keepalive_s,
        max_packet_bytes=b.max_packet_kb * 1024,
    )


def summarise_notify(config: Config) -> Callable[[], None]:
    def say() -> None:
        if config.notify.twilio is None:
            log.warning("notify", detail="no SMS or calls: [notify.twilio] absent")
        else:
            log.info(
                "notify",
                detail="SMS and calls through Twilio",
                api_base=redact_urls(config.notify.twilio.api_base),
            )
        if config.notify.police is None:
            log.info("notify", detail="no police webhook: [notify.police] webhook_url not set")
        else:
            log.info("notify", detail="police webhook configured")

    return say
