"""The Daemon's wiring to the outside besides MQTT: the operator feed and its HTTP
routes (Twilio callbacks, SMS replies), operator actions, health and readiness, metrics,
and the notification dispatcher."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tagwatch.daemon.effects import ESCALATION_KEY
from tagwatch.daemon.outbox import NotifyView
from tagwatch.feed.actions import resolve
from tagwatch.feed.app import create_app
from tagwatch.feed.cases import cases_view
from tagwatch.ingest.mqtt import Backoff
from tagwatch.notify.ack import acknowledge
from tagwatch.notify.inbound import TwilioInbound
from tagwatch.record import Entry, RecordError

log = structlog.get_logger("tagwatch.daemon")
FAILED_WINDOW_S = 300.0  # /readyz says 503 while this many s hold FAILED_LIMIT failed batches
FAILED_LIMIT = 3


def _status_url(twilio) -> str | None:
    return f"{twilio.public_url}/twilio/status" if twilio and twilio.public_url else None


def json_bytes(record: dict) -> bytes:
    return msgspec.json.encode(record)


# /readyz stays 503 this long after the broker session was lost or taken over.
SESSION_LOST_READY_S = 300.0


class Wiring:
    """A part of the Daemon (service.py): the feed app, its routes, operator actions,
    health, metrics and the dispatcher. It uses the Daemon's attributes."""

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
            state = self._action_checkpoints(alert_id)
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

    def _action_checkpoints(self, alert_id: str) -> dict[str, bytes]:
        """The escalation state an operator's action on alert_id commits with it."""
        return {ESCALATION_KEY: self.notify.escalation.to_bytes(without=alert_id)}

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
            may_send=self._may_send,
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
