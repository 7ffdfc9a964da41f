"""One record Batch per unit of work (a micro-batch, a tick, a delivery failure).

Layout of a batch's entries and outbox (all in one transaction):
- per accepted fix, for each case of its tag: chain `case:<case>`, kind "fix", body = the
  fix fields + `late`, tag, event_ts = the fix's ts;
- per rejection: chain `system`, kind "rejected", body = reason, detail, source, received,
  payload excerpt (the pipeline leaves it out for victim devices: it is their position);
- per alert record: chain `case:<case>`, kind "alert", body = the record (DESIGN 3.3),
  alert_id; with it an outbox item on channel "mqtt" (target = topic, body = topic and the
  exact payload text) and the deliveries of the notification policy (sms, call, police);
- per tag command: an "mqtt" outbox item (alert_id "cmd:<tag>");
- checkpoints: the pipeline's changed rule state, and the SMS ledger and escalation state
  whenever alert records went through the policy.
Rejected messages are published after the commit but are not outbox items: losing one
in a crash loses no alert, and they are in the record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from tagwatch.engine.alerts import AlertRecord, to_dict
from tagwatch.notify.escalation import Escalation
from tagwatch.notify.policy import PolicySettings, SmsLedger, deliveries_for
from tagwatch.notify.records import record_time
from tagwatch.pipeline import Rejected, Result
from tagwatch.record import Batch, Entry, OutboxItem
from tagwatch.wire import Fix, Topics, rejected_message, rfc3339
from zones import Case

MQTT = "mqtt"
SYSTEM_CHAIN = "system"
LEDGER_KEY = "notify:sms_ledger"
ESCALATION_KEY = "notify:escalation"
_json = msgspec.json.Encoder()


@dataclass
class Effects:
    batch: Batch = field(default_factory=Batch)
    rejected: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, payload)
    alert_types: Counter = field(default_factory=Counter)
    rejected_reasons: Counter = field(default_factory=Counter)
    fixes: int = 0
    duplicates: int = 0
    records: list[dict] = field(default_factory=list)

    @property
    def has_mqtt(self) -> bool:
        return any(item.channel == MQTT for item in self.batch.outbox)

    @property
    def has_deliveries(self) -> bool:
        return any(item.channel != MQTT for item in self.batch.outbox)

    @property
    def empty(self) -> bool:
        b = self.batch
        return not (b.entries or b.outbox or b.checkpoints or self.rejected)


@dataclass
class Notify:
    """The notification state the effects feed: policy settings, SMS ledger, escalation."""

    settings: PolicySettings
    ledger: SmsLedger
    escalation: Escalation


class EffectsBuilder:
    def __init__(
        self,
        topics: Topics,
        notify: Notify,
        cases: Callable[[], dict[str, Case]],
        tag_cases: Callable[[str], list[str]],
    ) -> None:
        self.topics = topics
        self.notify = notify
        self.cases = cases
        self.tag_cases = tag_cases

    def from_result(self, result: Result, checkpoints: dict[str, bytes], now: float) -> Effects:
        fx = Effects()
        fx.fixes, fx.duplicates = len(result.accepted), result.duplicates
        chains: dict[str, list[str]] = {}  # tag -> its cases' chains, for this batch
        for fix, late in result.accepted:
            self._fix(fx, fix, late, chains)
        for rejected in result.rejected:
            self._rejected(fx, rejected, now)
        self._alerts(fx, [_record_dict(r) for r in result.records], result.records, now)
        for tag, payload in result.commands:
            topic = self.topics.cmd(tag)
            fx.batch.outbox.append(
                OutboxItem(
                    f"cmd:{tag}", MQTT, topic, {"topic": topic, "payload": payload.decode()}, now
                )
            )
        fx.batch.checkpoints.update(checkpoints)
        return fx

    def from_records(self, records: list[dict], now: float) -> Effects:
        """Alert records made outside the pipeline (escalations, delivery failures)."""
        fx = Effects()
        self._alerts(fx, records, None, now)
        return fx

    def _fix(self, fx: Effects, fix: Fix, late: bool, chains: dict[str, list[str]]) -> None:
        body = msgspec.structs.asdict(fix)
        body.pop("source", None)
        body["late"] = late
        tag = fix.tag
        names = chains.get(tag)
        if names is None:
            names = chains[tag] = [f"case:{case}" for case in self.tag_cases(tag)]
        entries = fx.batch.entries
        for chain in names:
            entries.append(Entry(chain, "fix", body, tag=tag, event_ts=fix.ts))

    def _rejected(self, fx: Effects, rej: Rejected, now: float) -> None:
        r = rej.rejection
        fx.rejected_reasons[r.reason] += 1
        received = rej.received if rej.received is not None else now
        body = {
            "source": rej.source,
            "reason": r.reason,
            "detail": r.detail,
            "received": rfc3339(received),
            "payload": r.payload,
        }
        fx.batch.entries.append(
            Entry(SYSTEM_CHAIN, "rejected", body, tag=rej.source or None, event_ts=received)
        )
        if rej.source:
            fx.rejected.append((self.topics.rejected(rej.source), rejected_message(r, received)))

    def _alerts(
        self, fx: Effects, records: list[dict], structs: list[AlertRecord] | None, now: float
    ) -> None:
        if not records:
            return
        n = self.notify
        cases = self.cases()
        for i, record in enumerate(records):
            stamped = n.escalation.stamp(record)  # keeps the level reached (DESIGN 3.3)
            as_made, record = stamped is record, stamped
            fx.records.append(record)
            fx.alert_types[record["type"]] += 1
            chain, alert_id = f"case:{record['case']}", record["id"]
            fx.batch.entries.append(
                Entry(
                    chain,
                    "alert",
                    record,
                    tag=record.get("tag"),
                    event_ts=record_time(record),
                    alert_id=alert_id,
                )
            )
            topic = self.topics.alerts(record["case"])
            payload = structs[i] if structs is not None and as_made else record
            fx.batch.outbox.append(
                OutboxItem(
                    alert_id,
                    MQTT,
                    topic,
                    {"topic": topic, "payload": _json.encode(payload).decode()},
                    now,
                )
            )
            case = cases.get(record["case"])
            if case is not None:
                fx.batch.outbox.extend(deliveries_for(record, case, n.settings, n.ledger))
            n.escalation.observe(record)
        fx.batch.checkpoints[LEDGER_KEY] = n.ledger.to_bytes()
        fx.batch.checkpoints[ESCALATION_KEY] = n.escalation.to_bytes()


def _record_dict(record: AlertRecord) -> dict:
    return to_dict(record)
