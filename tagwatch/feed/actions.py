"""Operator actions from the dashboard: acknowledge and resolve, recorded then published.

`resolve` mirrors `tagwatch.notify.ack.acknowledge`: the operator action (who, when,
note) and the `resolved` alert record go on the alert's case chain in one commit.
`record_actions` gives the daemon the two callbacks `create_app` wants, wired to the
record and the hub; a daemon that must also tell its engine or escalation can wrap them.

The callbacks raise `UnknownAlert` (answered 404) or `AlertResolved` (409).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from tagwatch.feed.events import EventHub
from tagwatch.notify.ack import acknowledge, fix_time
from tagwatch.notify.records import escalation_level
from tagwatch.record import Batch, Entry, Record, RecordError
from tagwatch.wire import rfc3339

Action = Callable[[str, str, str], dict]  # (alert id, user name, note) -> new record


class UnknownAlert(LookupError):
    pass


class AlertResolved(RecordError):
    pass


def latest_record(record: Record, alert_id: str) -> dict:
    """The latest record of exactly alert_id (no prefix matching on the HTTP API)."""
    bodies = [e["body"] for e in record.alert_history(alert_id) if e["kind"] == "alert"]
    if not bodies:
        raise UnknownAlert(f"{record.label}: alert {alert_id!r}: no such alert")
    return bodies[-1]


def _check_open(record: Record, alert_id: str) -> dict:
    latest = latest_record(record, alert_id)
    if latest.get("state") == "resolved":
        raise AlertResolved(f"{record.label}: alert {alert_id}: already resolved")
    return latest


def resolve(
    record: Record,
    alert_id: str,
    by: str,
    note: str,
    now: float,
    *,
    checkpoints: Mapping[str, bytes] | None = None,
) -> dict:
    latest = _check_open(record, alert_id)
    chain, tag = f"case:{latest['case']}", latest.get("tag")
    action = {"action": "resolve", "alert": alert_id, "by": by, "note": note, "at": rfc3339(now)}
    resolved = {
        **latest,
        "state": "resolved",
        "ts": fix_time(record, alert_id, latest),
        "raised": rfc3339(now),
        "escalation": escalation_level(latest),  # the level reached is kept
        "detail": f"resolved by {by}" + (f": {note}" if note else ""),
    }
    record.commit(
        Batch(
            entries=[
                Entry(chain, "action", action, tag=tag, event_ts=now, alert_id=alert_id),
                Entry(chain, "alert", resolved, tag=tag, event_ts=now, alert_id=alert_id),
            ],
            checkpoints=dict(checkpoints or {}),
        ),
        recorded_at=now,
    )
    return resolved


def record_actions(
    record: Record, hub: EventHub, clock: Callable[[], float] = time.time
) -> tuple[Action, Action]:
    """(on_ack, on_resolve): write to the record, then publish the new record to the hub."""

    def on_ack(alert_id: str, by: str, note: str) -> dict:
        before = _check_open(record, alert_id)
        acked = acknowledge(record, alert_id, by, note, clock())
        if acked != before:  # a repeated ack is recorded but changes no state
            hub.publish(acked)
        return acked

    def on_resolve(alert_id: str, by: str, note: str) -> dict:
        resolved = resolve(record, alert_id, by, note, clock())
        hub.publish(resolved)
        return resolved

    return on_ack, on_resolve
