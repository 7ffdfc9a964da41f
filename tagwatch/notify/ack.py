"""Acknowledgement of an alert: the operator action and the `acknowledged` record.

Both go on the alert's case chain `case:<case>` in one commit, so the record never
holds an acknowledged alert without who did it and when. Acknowledging an alert that is
already acknowledged records the action again (every ack is evidence) but no second
`acknowledged` record. A resolved alert cannot be acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tagwatch.notify.records import escalation_level
from tagwatch.record import Batch, Entry, Record, RecordError
from tagwatch.wire import rfc3339


class AckError(RecordError):
    """The alert cannot be acknowledged; the message names the alert and the record."""


def acknowledge(
    record: Record,
    alert_id: str,
    by: str,
    note: str,
    now: float,
    *,
    checkpoints: Mapping[str, bytes] | None = None,
    extra: Sequence[Entry] = (),
) -> dict:
    """Acknowledge alert_id (or a unique prefix of it, such as the SMS reference).

    checkpoints (the daemon's escalation state without this alert) and extra entries
    (the SMS reply that acknowledges) go into the same commit, so a restart never finds
    the acknowledgement without them."""
    alert_id, latest = _latest(record, alert_id)
    if latest.get("state") == "resolved":
        raise AckError(f"{record.label}: alert {alert_id}: already resolved")
    chain, tag = f"case:{latest['case']}", latest.get("tag")
    action = {
        "action": "acknowledge",
        "alert": alert_id,
        "by": by,
        "note": note,
        "at": rfc3339(now),
    }
    entries = [Entry(chain, "action", action, tag=tag, event_ts=now, alert_id=alert_id)]
    acked = latest
    if latest.get("state") != "acknowledged":
        detail = f"acknowledged by {by}" + (f": {note}" if note else "")
        acked = {
            **latest,
            "state": "acknowledged",
            "ts": fix_time(record, alert_id, latest),
            "raised": rfc3339(now),
            "escalation": escalation_level(latest),  # the level reached is kept
            "detail": detail,
        }
        entries.append(Entry(chain, "alert", acked, tag=tag, event_ts=now, alert_id=alert_id))
    entries += extra
    record.commit(Batch(entries=entries, checkpoints=dict(checkpoints or {})), recorded_at=now)
    return acked


def fix_time(record: Record, alert_id: str, latest: dict) -> str:
    """The `ts` an operator's record keeps: that of the alert's latest open or updated
    record, the fix it is about (an escalated record's `ts` is its deadline); `raised`
    says when the operator acted."""
    for entry in reversed(record.alert_history(alert_id)):
        body = entry["body"]
        if entry["kind"] == "alert" and body.get("state") in ("open", "updated"):
            return body.get("ts", latest.get("ts"))
    return latest.get("ts")


def _latest(record: Record, alert_id: str) -> tuple[str, dict]:
    bodies = [e["body"] for e in record.alert_history(alert_id) if e["kind"] == "alert"]
    if bodies:
        return alert_id, bodies[-1]
    prefix = alert_id.strip().lower()
    found = [a for a in record.latest_alerts(limit=100_000) if a["id"].startswith(prefix)]
    if len(found) == 1 and prefix:
        return found[0]["id"], found[0]
    if len(found) > 1 and prefix:
        raise AckError(
            f"{record.label}: alert {alert_id!r}: {len(found)} alerts start "
            "with it; give more of the id"
        )
    raise AckError(f"{record.label}: alert {alert_id!r}: no such alert")
