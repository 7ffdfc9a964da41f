"""Who gets what for one alert record: pure, state passed in explicitly.

Decisions:
- SMS at once, to each victim concerned, for: a confirmed (critical) zone.breach, any
  proximity, a critical approach, a critical curfew.breach; only for `open` and
  `updated` records. Victims concerned: the record's `victim`, else the victim of the
  record's zone, else every victim of the case; only those with a phone.
- At most one SMS per alert id: `SmsLedger` (a small object the caller keeps, and
  persists as a checkpoint with `to_bytes`/`from_bytes`) remembers the alert ids that
  got one. We keep the ledger rather than read the outbox back, because the outbox has
  no query by alert id and a ledger keeps the policy a function of its inputs.
- Rate limit per victim: at most `sms_per_window` SMS in `sms_window_s` (3 in 10 min).
  Beyond it, one `summary` SMS is queued for when the window frees up; alerts that
  arrive while a summary is pending are covered by it and send nothing more.
- An `escalated` record of level 2 or more: a voice call to each victim concerned.
  Level 1 is for police control only. Later records keep the level reached (3.3) but
  call no one again.
- Every record (any type and state): one police webhook item when a webhook is set.
- Protection notices, to a victim whose case says `notify_degraded: true` (DESIGN 3.4):
  a `protection.degraded` episode still open `degraded_notify_s` after it opened sends
  one SMS (`degraded_notices`, on the daemon's tick); its resolution then sends one
  more (restored). None while an alert SMS went to the victim within `sms_window_s`
  before (the alert's text already says what matters); then none at the restore
  either. They count against the rate limit like any SMS (beyond it: sent when the
  window frees up). Pending and sent notices live in the ledger, so a restart sends
  none twice.
- Outbox bodies hold no coordinates, position or address: victim items carry the
  rendered text, police items only a reference to the alert record, which the
  dispatcher reads back from the case record when it posts.
- Times come from the record (`raised`, wall clock), so replaying records replays
  decisions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

from tagwatch.notify import texts
from tagwatch.notify.records import escalation_level, record_time
from tagwatch.record import OutboxItem
from zones.models import Case, Victim

SMS, CALL, POLICE = "sms", "call", "police"
DEGRADED, RESTORED = "protection.degraded", "protection.restored"
_SMS_TYPES = {"zone.breach", "proximity", "approach", "curfew.breach"}


@dataclass(frozen=True)
class PolicySettings:
    sms_enabled: bool = False  # [notify.twilio] configured
    police_enabled: bool = False  # [notify.police] webhook configured
    sms_per_window: int = 3
    sms_window_s: float = 600.0
    ledger_keep_s: float = 7 * 86400.0  # forget alert ids older than this
    emergency: str = texts.DEFAULT_EMERGENCY
    languages: Mapping[str, str] = field(default_factory=dict)  # case id -> language
    case_texts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # overrides
    degraded_notify_s: Mapping[str, float] = field(default_factory=dict)  # case id -> s
    default_degraded_notify_s: float = 900.0


@dataclass
class SmsLedger:
    """What the SMS policy remembers: alert ids texted, and each victim's recent sends."""

    texted: dict[str, float] = field(default_factory=dict)  # alert id -> when
    sends: dict[str, list[float]] = field(default_factory=dict)  # "case/victim" -> times
    summary_at: dict[str, float] = field(default_factory=dict)  # "case/victim" -> when due
    # Protection notices (new members: a ledger checkpointed before them loads empty ones)
    alerted: dict[str, float] = field(default_factory=dict)  # "case/victim" -> last alert SMS
    degraded: dict[str, list] = field(default_factory=dict)  # alert id -> [case, victim, since]
    noticed: dict[str, list] = field(default_factory=dict)  # alert id -> [case, victim]

    def to_bytes(self) -> bytes:
        doc = {"texted": self.texted, "sends": self.sends, "summary_at": self.summary_at,
               "alerted": self.alerted, "degraded": self.degraded, "noticed": self.noticed}
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SmsLedger:
        try:
            doc = json.loads(data)
            return cls(
                dict(doc["texted"]),
                {k: list(v) for k, v in doc["sends"].items()},
                dict(doc["summary_at"]),
                dict(doc.get("alerted", {})),
                {k: list(v) for k, v in doc.get("degraded", {}).items()},
                {k: list(v) for k, v in doc.get("noticed", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"SMS ledger checkpoint: unreadable: {exc}") from None

    def part(self, alerts: Callable[[str], bool], victims: Callable[[str], bool]) -> SmsLedger:
        """The entries of the chosen alert ids and victims ("case/victim"): in cluster
        mode one partition's share, checkpointed under that partition's key. A
        protection notice's entry goes with its victim."""

        def of_victim(value: list) -> bool:
            return victims(f"{value[0]}/{value[1]}")

        return SmsLedger(
            {k: t for k, t in self.texted.items() if alerts(k)},
            {k: list(v) for k, v in self.sends.items() if victims(k)},
            {k: t for k, t in self.summary_at.items() if victims(k)},
            {k: t for k, t in self.alerted.items() if victims(k)},
            {k: list(v) for k, v in self.degraded.items() if of_victim(v)},
            {k: list(v) for k, v in self.noticed.items() if of_victim(v)},
        )

    def take(self, other: SmsLedger) -> None:
        """Add other's entries (a partition taken over), in place."""
        for f in fields(self):
            getattr(self, f.name).update(getattr(other, f.name))

    def drop(self, alerts: Callable[[str], bool], victims: Callable[[str], bool]) -> None:
        """Forget the chosen alerts' and victims' entries (a partition given up), in place."""
        kept = self.part(lambda a: not alerts(a), lambda v: not victims(v))
        for f in fields(self):
            setattr(self, f.name, getattr(kept, f.name))

    def prune(self, now: float, window_s: float, keep_s: float) -> None:
        self.texted = {k: t for k, t in self.texted.items() if t > now - keep_s}
        self.sends = {
            k: kept for k, v in self.sends.items() if (kept := [t for t in v if t > now - window_s])
        }
        self.summary_at = {k: t for k, t in self.summary_at.items() if t > now}
        self.alerted = {k: t for k, t in self.alerted.items() if t > now - keep_s}


def sms_worthy(record: dict) -> bool:
    if record.get("type") not in _SMS_TYPES or record.get("state") not in ("open", "updated"):
        return False
    return record.get("type") == "proximity" or record.get("severity") == "critical"


def victims_concerned(record: dict, case: Case) -> list[Victim]:
    """The record's victim, else its zone's victim, else all the case's; with a phone."""
    named = record.get("victim")
    if named is None and record.get("zone") is not None:
        named = next((z.victim for z in case.zones if z.zone_id == record["zone"]), None)
    chosen = [v for v in case.victims if named is None or v.id == named]
    return [v for v in chosen if v.phone]


def deliveries_for(
    record: dict, case: Case, settings: PolicySettings, ledger: SmsLedger
) -> list[OutboxItem]:
    """The outbox items one alert record causes; updates `ledger` for the SMS it queues."""
    now = record_time(record, "raised")
    items: list[OutboxItem] = []
    if settings.sms_enabled and sms_worthy(record):
        items += _sms_items(record, case, settings, ledger, now)
    if settings.sms_enabled and record["type"] == DEGRADED:
        items += _protection(record, case, settings, ledger, now)
    escalated = record["state"] == "escalated"
    if settings.sms_enabled and escalated and escalation_level(record) >= 2:
        items += _call_items(record, case, settings, now)
    if settings.police_enabled:
        items.append(_police_item(record, now))
    return items


def _victim_body(record: dict, victim: Victim, kind: str, text: str, language: str) -> dict:
    return {
        "kind": kind,
        "text": text,
        "case": record["case"],
        "victim": victim.id,
        "tag": record.get("tag"),
        "language": language,
    }


def _language(case: Case, settings: PolicySettings) -> str:
    return settings.languages.get(case.id) or texts.DEFAULT_LANGUAGE


def _text(key: str, record: dict, case: Case, settings: PolicySettings) -> str:
    return texts.render(
        key,
        record["id"],
        _language(case, settings),
        settings.case_texts.get(case.id),
        settings.emergency,
    )


def _sms_items(
    record: dict, case: Case, settings: PolicySettings, ledger: SmsLedger, now: float
) -> list[OutboxItem]:
    if record["id"] in ledger.texted:
        return []
    ledger.prune(now, settings.sms_window_s, settings.ledger_keep_s)
    ledger.texted[record["id"]] = now
    items = []
    for victim in victims_concerned(record, case):
        key = f"{case.id}/{victim.id}"
        sends = ledger.sends.setdefault(key, [])
        text_key, when = record["type"], now
        if len(sends) >= settings.sms_per_window:
            if key in ledger.summary_at:
                continue  # the pending summary covers this alert
            text_key, when = "summary", min(sends) + settings.sms_window_s
            ledger.summary_at[key] = when
        sends.append(when)
        ledger.alerted[key] = when
        text = _text(text_key, record, case, settings)
        body = _victim_body(record, victim, SMS, text, _language(case, settings))
        items.append(OutboxItem(record["id"], SMS, victim.phone, body, when))
    return items


def _opted_in(case: Case, victim_id: str | None) -> Victim | None:
    victim = next((v for v in case.victims if v.id == victim_id), None)
    return victim if victim is not None and victim.notify_degraded and victim.phone else None


def _protection(
    record: dict, case: Case, settings: PolicySettings, ledger: SmsLedger, now: float
) -> list[OutboxItem]:
    """A protection.degraded record: remember an opened episode for its notice; at its
    resolution, the restored notice when the degraded one went out."""
    alert_id, state = record["id"], record["state"]
    victim = _opted_in(case, record.get("victim"))
    if victim is None:
        return []
    if state == "open" and alert_id not in ledger.noticed:
        ledger.degraded.setdefault(alert_id, [case.id, victim.id, now])
        return []
    if state != "resolved":
        return []
    ledger.degraded.pop(alert_id, None)
    if ledger.noticed.pop(alert_id, None) is None:
        return []
    return [_notice(RESTORED, alert_id, case, victim, settings, ledger, now)]


def degraded_notices(
    now: float, cases: Mapping[str, Case], settings: PolicySettings, ledger: SmsLedger
) -> list[OutboxItem]:
    """The degraded notices due at `now` (the daemon's tick); updates `ledger`."""
    if not settings.sms_enabled or not ledger.degraded:
        return []
    items = []
    for alert_id, (case_id, victim_id, since) in sorted(ledger.degraded.items()):
        case = cases.get(case_id)
        wait = settings.degraded_notify_s.get(case_id, settings.default_degraded_notify_s)
        if case is None or since + wait > now:
            continue
        del ledger.degraded[alert_id]
        victim = _opted_in(case, victim_id)
        key = f"{case_id}/{victim_id}"
        if victim is None or ledger.alerted.get(key, -math.inf) > since - settings.sms_window_s:
            continue  # opted out since, or an alert's SMS already told them what matters
        ledger.noticed[alert_id] = [case_id, victim_id]
        items.append(_notice(DEGRADED, alert_id, case, victim, settings, ledger, now))
    return items


def _notice(
    kind: str,
    alert_id: str,
    case: Case,
    victim: Victim,
    settings: PolicySettings,
    ledger: SmsLedger,
    now: float,
) -> OutboxItem:
    """One protection notice SMS, counted against the victim's rate limit (beyond it,
    sent when the window frees up)."""
    ledger.prune(now, settings.sms_window_s, settings.ledger_keep_s)
    sends = ledger.sends.setdefault(f"{case.id}/{victim.id}", [])
    when = now if len(sends) < settings.sms_per_window else min(sends) + settings.sms_window_s
    sends.append(when)
    record = {"id": alert_id, "case": case.id, "tag": case.tags[0]}
    text = _text(kind, record, case, settings)
    body = _victim_body(record, victim, SMS, text, _language(case, settings))
    body["notice"] = kind
    return OutboxItem(alert_id, SMS, victim.phone, body, when)


def _call_items(record: dict, case: Case, settings: PolicySettings, now: float) -> list[OutboxItem]:
    text = _text("call", record, case, settings)
    language = texts.SAY_LANGUAGES.get(_language(case, settings), "en-GB")
    items = []
    for victim in victims_concerned(record, case):
        body = _victim_body(record, victim, CALL, text, language)
        items.append(OutboxItem(record["id"], CALL, victim.phone, body, now))
    return items


def _police_item(record: dict, now: float) -> OutboxItem:
    body = {
        "kind": POLICE,
        "case": record["case"],
        "tag": record.get("tag"),
        "victim": record.get("victim"),
        "state": record["state"],
        "raised": record["raised"],
        "level": escalation_level(record),
    }
    return OutboxItem(record["id"], POLICE, POLICE, body, now)
