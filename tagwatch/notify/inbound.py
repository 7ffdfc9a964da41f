"""Inbound Twilio webhooks, ASGI-agnostic: (method, path, headers, body) -> Reply.

`path` is the request path with its query string, as Twilio requested it; the URL
Twilio signed is `public_base_url + path`, so public_base_url must be the address
Twilio is configured with (scheme, host and port as seen from outside). Every request
must carry a valid `X-Twilio-Signature`, else 403 and nothing happens.

- status_callback: the SMS status callbacks the dispatcher asked for
  (`?alert=..&case=..&row=..`). Twilio may send them twice or out of order; only a
  status more advanced than the one kept for that message SID counts: it goes into the
  case record (kind "delivery", no phone number) and to the escalation.
- sms_reply: a victim's answer to an alert SMS acknowledges, by "victim:<id>", one
  unacknowledged alert (open, updated or escalated) that was texted to that victim:
  the one whose reference (the 6 characters the SMS showed) the reply carries, else
  the latest texted. Never an alert that was not texted to that victim. Each reply is
  recorded once, under its MessageSid (an `sms_reply` action whose alert_id is
  "sms:<MessageSid>", in the same commit as the acknowledgement): a replayed reply,
  even after a restart, does nothing.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from tagwatch.delivery_terms import STATUS_RANK
from tagwatch.notify import texts
from tagwatch.notify.ack import AckError, acknowledge
from tagwatch.notify.escalation import Escalation
from tagwatch.notify.outcome import redact
from tagwatch.notify.records import DELIVERY_FAILED
from tagwatch.record import Batch, Entry, Record
from tagwatch.wire import rfc3339

_TWIML = "application/xml"
_REFERENCE = re.compile(r"\b[0-9A-Fa-f]{6}\b")

# (alert id, by, note, now, extra entries) -> the acknowledged record; raises AckError
AckFn = Callable[[str, str, str, float, Sequence[Entry]], dict]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"


@dataclass
class Statuses:
    """The most advanced status seen per message SID (kept small: terminal ones expire)."""

    latest: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def advance(self, sid: str, status: str) -> bool:
        """Keep status if it is more advanced than the one held; True if it was."""
        rank = STATUS_RANK.get(status)
        if rank is None:
            return False
        with self._lock:
            held = self.latest.get(sid)
            if held is not None and STATUS_RANK[held] >= rank:
                return False
            self.latest[sid] = status
            return True


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


class TwilioInbound:
    def __init__(
        self,
        auth_token: str,
        public_base_url: str,
        record: Record,
        victims_by_phone: Mapping[str, tuple[str, str]],  # phone -> (case id, victim id)
        escalation: Escalation | None = None,
        statuses: Statuses | None = None,
        clock: Callable[[], float] = time.time,
        on_ack: AckFn | None = None,
    ) -> None:
        """on_ack: how a reply acknowledges (the daemon's, which also stops and
        checkpoints the escalation and publishes the record); default: in the record
        here, and the clock of `escalation`."""
        self.validator = RequestValidator(auth_token)
        self.base = public_base_url.rstrip("/")
        self.record, self.victims, self.escalation = record, victims_by_phone, escalation
        self.statuses = statuses or Statuses()
        self.clock = clock
        self.on_ack = on_ack or self._acknowledge
        self._replies = threading.Lock()  # one reply at a time: check, then record

    def _verified(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str] | Reply:
        if method.upper() != "POST":
            return Reply(405, f"{path}: POST only".encode())
        try:
            params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return Reply(400, f"{path}: body is not UTF-8 form data".encode())
        signature = _header(headers, "X-Twilio-Signature")
        if not signature or not self.validator.validate(self.base + path, params, signature):
            return Reply(403, f"{path}: X-Twilio-Signature missing or invalid".encode())
        return params

    def status_callback(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        params = self._verified(method, path, headers, body)
        if isinstance(params, Reply):
            return params
        query = dict(parse_qsl(urlsplit(path).query))
        alert_id, case = query.get("alert"), query.get("case")
        # Messages report MessageSid/MessageStatus, voice calls CallSid/CallStatus.
        channel = "call" if "CallSid" in params else "sms"
        prefix = "Call" if channel == "call" else "Message"
        sid, status = params.get(f"{prefix}Sid"), params.get(f"{prefix}Status")
        if not alert_id or not case or not sid or not status:
            return Reply(
                400,
                f"{path}: needs ?alert= and ?case=, and MessageSid and MessageStatus "
                "(or CallSid and CallStatus)".encode(),
            )
        if not self.statuses.advance(sid, status):
            return Reply(204)  # duplicate or older than what we hold: nothing to do
        now = self.clock()
        entry = {
            "channel": channel,
            "sid": sid,
            "status": status,
            "row": query.get("row"),
            "error_code": params.get("ErrorCode"),
        }
        self.record.commit(
            Batch(
                entries=[Entry(f"case:{case}", "delivery", entry, event_ts=now, alert_id=alert_id)]
            ),
            now,
        )
        if self.escalation is not None and channel == "sms":
            self.escalation.delivery_status(alert_id, status, now)
        return Reply(204)

    def sms_reply(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        params = self._verified(method, path, headers, body)
        if isinstance(params, Reply):
            return params
        who = self.victims.get(params.get("From", ""))
        if who is None:
            return _twiml(None)  # say nothing to an unknown number
        sid = params.get("MessageSid") or params.get("SmsSid")
        if not sid:
            return Reply(400, f"{path}: no MessageSid".encode())
        case, victim = who
        text = params.get("Body", "")
        with self._replies:
            if self._seen(sid):
                return _twiml(None)  # a replay (or Twilio's retry): done already
            alert = self._texted_alert(case, victim, text)
            now = self.clock()
            reply = Entry(
                f"case:{case}",
                "action",
                {
                    "action": "sms_reply",
                    "sid": sid,
                    "victim": victim,
                    "alert": alert["id"] if alert else None,
                    "at": rfc3339(now),
                },
                event_ts=now,
                alert_id=f"sms:{sid}",
            )
            if alert is not None:
                note = "SMS reply: " + redact(text)[:160]
                try:
                    self.on_ack(alert["id"], f"victim:{victim}", note, now, [reply])
                    return _twiml(texts.render("ack", alert["id"]))
                except AckError:
                    pass  # resolved in between: nothing left to acknowledge
            self.record.commit(Batch(entries=[reply]), now)
            return _twiml(None)

    def _acknowledge(
        self, alert_id: str, by: str, note: str, now: float, extra: Sequence[Entry]
    ) -> dict:
        acked = acknowledge(self.record, alert_id, by, note, now, extra=extra)
        if self.escalation is not None:
            self.escalation.acknowledge(alert_id, by, note, now)
        return acked

    def _seen(self, sid: str) -> bool:
        return any(e["kind"] == "action" for e in self.record.alert_history(f"sms:{sid}"))

    def _texted_alert(self, case: str, victim: str, text: str) -> dict | None:
        """The open alert of this victim, texted to them, that the reply answers."""
        refs = {m.upper() for m in _REFERENCE.findall(text)}
        texted = []
        for alert in self.record.latest_alerts(state="open"):
            if (
                alert.get("case") == case
                and alert.get("victim") in (victim, None)
                and alert.get("state") in ("open", "updated", "escalated")
                and alert.get("type") != DELIVERY_FAILED
                and self._texted(alert["id"], victim)
            ):
                if texts.reference(alert["id"]) in refs:
                    return alert
                texted.append(alert)
        return texted[0] if texted else None  # newest first

    def _texted(self, alert_id: str, victim: str) -> bool:
        """An SMS of this alert went to this victim (Twilio took it)."""
        return any(
            d["channel"] == "sms"
            and d["victim"] == victim
            and (d["status"] == "done" or d["sid"] is not None)
            for d in self.record.deliveries(alert_id)
        )


def _twiml(text: str | None) -> Reply:
    response = MessagingResponse()
    if text:
        response.message(text)
    return Reply(200, str(response).encode(), _TWIML)
