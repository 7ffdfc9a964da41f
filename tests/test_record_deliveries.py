"""Record.deliveries: how an alert's SMS, calls and police webhook went, without phone numbers.

SQLite always, PostgreSQL when TAGWATCH_TEST_POSTGRES is set (fixtures from test_record).
Status callbacks are recorded as the inbound webhook records them: a "delivery" entry on
the case chain with the alert id, the message SID, the status and the outbox row id.
"""

from __future__ import annotations

import json

from tagwatch.record import Batch, Entry, OutboxItem, Record
from tests import test_record as base
from tests.test_record import CHAIN, T0, alert

backend = base.backend  # the fixtures: SQLite, and PostgreSQL when configured
record = base.record

PHONE = "+447700900123"
SMS_BODY = {"kind": "sms", "text": "Alert a1", "case": "C-0001", "victim": "V-01"}


def queue(record: Record, alert_id: str, *channels: str) -> dict[str, int]:
    """Commit the alert and one outbox row per channel; returns channel -> row id."""
    items = [
        OutboxItem(alert_id, ch, PHONE if ch in ("sms", "call") else ch, SMS_BODY, T0)
        for ch in channels
    ]
    record.commit(Batch([alert(alert_id, "open", 1)], items), T0 + 1)
    rows = [r for r in record.outbox_due(T0 + 10, 1000) if r.alert_id == alert_id]
    return {r.channel: r.id for r in rows}


def callback(
    record: Record,
    alert_id: str,
    row: int,
    sid: str,
    status: str,
    at: float,
    error_code: str | None = None,
) -> None:
    body = {
        "channel": "sms",
        "sid": sid,
        "status": status,
        "row": str(row),
        "error_code": error_code,
    }
    entry = Entry(CHAIN, "delivery", body, event_ts=at, alert_id=alert_id)
    record.commit(Batch([entry]), at)


def by_channel(found: list[dict]) -> dict[str, dict]:
    return {d["channel"]: d for d in found}


def test_each_row_but_mqtt_with_its_outcome_and_no_phone_number(record: Record) -> None:
    rows = queue(record, "a1", "sms", "call", "police", "mqtt")
    queue(record, "a2", "sms")  # another alert's row is not a1's
    record.outbox_done(rows["sms"], {"sid": "SM111", "status": "queued", "at": T0 + 2})
    record.outbox_retry(
        rows["call"], T0 + 60, f"attempt 1: retry: Twilio HTTP 503: cannot call {PHONE} now"
    )
    record.outbox_failed(rows["police"], "attempt 8: retry: HTTP 502")
    found = record.deliveries("a1")
    assert [d["row"] for d in found] == sorted(rows[c] for c in ("sms", "call", "police"))
    got = by_channel(found)
    assert set(got) == {"sms", "call", "police"}
    assert got["sms"]["status"] == "done" and got["sms"]["delivery"] == "queued"
    assert got["sms"]["sid"] == "SM111" and got["sms"]["victim"] == "V-01"
    assert got["sms"]["attempts"] == 0 and got["sms"]["last_error"] is None
    call = got["call"]
    assert call["status"] == "pending" and call["attempts"] == 1
    assert call["not_before"] == T0 + 60 and call["delivery"] is None
    assert call["last_error"] == "attempt 1: retry: Twilio HTTP 503: cannot call <phone> now"
    assert got["police"]["status"] == "failed" and got["police"]["attempts"] == 1
    assert all(d["updated_at"] > 0 for d in found)
    text = json.dumps(found)
    assert PHONE not in text and "7700900123" not in text and "target" not in text


def test_most_advanced_callback_wins_even_out_of_order(record: Record) -> None:
    rows = queue(record, "a1", "sms")
    record.outbox_done(rows["sms"], {"sid": "SM222", "status": "queued"})
    callback(record, "a1", rows["sms"], "SM222", "sent", T0 + 3)
    callback(record, "a1", rows["sms"], "SM222", "delivered", T0 + 4)
    callback(record, "a1", rows["sms"], "SM222", "sent", T0 + 5)  # late, after a restart
    [sms] = record.deliveries("a1")
    assert sms["delivery"] == "delivered" and sms["status"] == "done"


def test_failed_callback_carries_its_error_code(record: Record) -> None:
    rows = queue(record, "a1", "sms", "call")
    record.outbox_done(rows["sms"], {"sid": "SM333", "status": "queued"})
    record.outbox_done(rows["call"], {"sid": "CA333", "status": "queued"})
    callback(record, "a1", rows["sms"], "SM333", "undelivered", T0 + 3, error_code="30003")
    got = by_channel(record.deliveries("a1"))
    assert got["sms"]["delivery"] == "undelivered" and got["sms"]["error_code"] == "30003"
    # the callback names the SMS row: the call keeps its own status
    assert got["call"]["delivery"] == "queued" and got["call"]["error_code"] is None


def test_callback_found_by_sid_when_it_names_no_row(record: Record) -> None:
    rows = queue(record, "a1", "sms")
    record.outbox_done(rows["sms"], {"sid": "SM444", "status": "queued"})
    body = {"channel": "sms", "sid": "SM444", "status": "delivered", "row": None}
    record.commit(Batch([Entry(CHAIN, "delivery", body, event_ts=T0 + 3, alert_id="a1")]), T0 + 3)
    assert record.deliveries("a1")[0]["delivery"] == "delivered"


def test_police_result_is_not_a_delivery_status(record: Record) -> None:
    rows = queue(record, "a1", "police")
    record.outbox_done(rows["police"], {"status": 200, "at": T0 + 2, "attempt": 1})
    [police] = record.deliveries("a1")
    assert police["status"] == "done" and police["delivery"] is None and police["sid"] is None


def test_unknown_alert_has_no_deliveries(record: Record) -> None:
    queue(record, "a1", "sms")
    assert record.deliveries("nope") == []
