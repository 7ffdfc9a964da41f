"""Inbound Twilio webhooks (signature checked) and acknowledgement into the case record."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from tagwatch.notify import texts
from tagwatch.notify.ack import AckError, acknowledge
from tagwatch.notify.escalation import Escalation, EscalationSettings
from tagwatch.notify.inbound import TwilioInbound
from tagwatch.record import Batch, Entry, OutboxItem, Record
from tests.test_notify_policy import PHONES, T0, alert

TOKEN, BASE = "secret-token", "https://tagwatch.example:8443"


@pytest.fixture
def record(tmp_path):
    rec = Record.open(f"sqlite:///{tmp_path}/record.db")
    yield rec
    rec.close()


def store(record: Record, rec: dict) -> None:
    record.commit(Batch(entries=[Entry(f"case:{rec['case']}", "alert", rec, tag=rec["tag"],
                                       event_ts=T0, alert_id=rec["id"])]), time.time())


def texted(record: Record, rec: dict, victim: str = "V-01", sid: str = "SMout") -> None:
    """An SMS of rec to victim, taken by Twilio (outbox row done with its SID)."""
    body = {"kind": "sms", "text": "alert", "case": rec["case"], "victim": victim,
            "tag": rec["tag"], "language": "en"}
    record.commit(Batch(outbox=[OutboxItem(rec["id"], "sms", PHONES[victim], body, T0)]),
                  time.time())
    row = next(r for r in record.outbox_due(T0 + 1e9, 1000)
               if r.alert_id == rec["id"] and r.channel == "sms")
    record.outbox_done(row.id, {"sid": f"{sid}{rec['id'][:4]}", "status": "queued"})


def reply(hooks: TwilioInbound, text: str, sid: str, phone: str = PHONES["V-01"]):
    headers, body = signed("/twilio/sms", {"From": phone, "Body": text, "MessageSid": sid})
    return hooks.sms_reply("POST", "/twilio/sms", headers, body)


def signed(path: str, params: dict, token: str = TOKEN) -> tuple[dict, bytes]:
    signature = RequestValidator(token).compute_signature(BASE + path, params)
    return {"X-Twilio-Signature": signature}, urlencode(params).encode()


def inbound(record: Record, esc: Escalation | None = None) -> TwilioInbound:
    return TwilioInbound(TOKEN, BASE, record, {PHONES["V-01"]: ("C-0001", "V-01")}, esc,
                         clock=lambda: T0 + 30)


def status(hooks: TwilioInbound, sid: str, state: str, token: str = TOKEN):
    path = f"/twilio/status?alert={alert()['id']}&case=C-0001&row=1"
    headers, body = signed(path, {"MessageSid": sid, "MessageStatus": state}, token)
    return hooks.status_callback("POST", path, headers, body)


def deliveries(record: Record) -> list[str]:
    return [e["body"]["status"] for e in record.alert_history(alert()["id"])
            if e["kind"] == "delivery"]


def test_status_callbacks_keep_the_most_advanced_status(record):
    esc = Escalation(EscalationSettings(ack_timeout_s=3600))
    esc.observe(alert())
    hooks = inbound(record, esc)
    answers = [status(hooks, "SM1", s).status for s in ("sent", "delivered", "sent", "delivered")]
    assert answers == [204, 204, 204, 204]
    assert deliveries(record) == ["sent", "delivered"]  # late and repeated ones ignored
    assert record.verify() == []


def test_call_status_callbacks_are_recorded_and_never_escalate_as_an_sms(record):
    esc = Escalation(EscalationSettings(ack_timeout_s=3600))
    esc.observe(alert())
    hooks = inbound(record, esc)
    path = f"/twilio/status?alert={alert()['id']}&case=C-0001&row=2"
    for state in ("ringing", "completed", "in-progress"):
        headers, body = signed(path, {"CallSid": "CA1", "CallStatus": state})
        assert hooks.status_callback("POST", path, headers, body).status == 204
    calls = [e["body"] for e in record.alert_history(alert()["id"]) if e["kind"] == "delivery"]
    assert [(c["channel"], c["status"]) for c in calls] == [("call", "ringing"),
                                                            ("call", "completed")]
    headers, body = signed(path, {"CallSid": "CA2", "CallStatus": "failed"})
    hooks.status_callback("POST", path, headers, body)
    assert esc.tick(T0 + 60) == []  # a failed call is not a failed SMS


def test_a_forged_status_callback_is_refused(record):
    esc = Escalation(EscalationSettings(ack_timeout_s=3600))
    esc.observe(alert())
    hooks = inbound(record, esc)
    assert status(hooks, "SM1", "failed", token="not the token").status == 403
    path = f"/twilio/status?alert={alert()['id']}&case=C-0001"
    assert hooks.status_callback("POST", path, {}, b"MessageSid=SM1").status == 403
    assert deliveries(record) == [] and esc.tick(T0 + 60) == []
    assert status(hooks, "SM1", "failed").status == 204  # the genuine one counts
    (escalated,) = esc.tick(T0 + 60)
    assert "SMS to the victim failed" in escalated["detail"]


def test_a_victim_reply_acknowledges_the_latest_open_alert(record):
    store(record, alert(1))
    store(record, alert(2, at=T0 + 10))
    texted(record, alert(1))
    texted(record, alert(2, at=T0 + 10))
    esc = Escalation(EscalationSettings(ack_timeout_s=120))
    esc.observe(alert(1))
    esc.observe(alert(2, at=T0 + 10))
    hooks = inbound(record, esc)
    answer = reply(hooks, "got it, safe", "SM" + "1" * 32)
    assert answer.status == 200 and texts.reference(alert(2)["id"]) in answer.body.decode()
    latest = {a["id"]: a["state"] for a in record.latest_alerts()}
    assert latest == {alert(1)["id"]: "open", alert(2)["id"]: "acknowledged"}
    (action,) = [e for e in record.alert_history(alert(2)["id"]) if e["kind"] == "action"]
    assert action["body"]["by"] == "victim:V-01" and "got it, safe" in action["body"]["note"]
    assert [r["id"] for r in esc.tick(T0 + 1000)] == [alert(1)["id"]] * 2  # only the other


def test_a_forged_or_unknown_reply_acknowledges_nothing(record):
    store(record, alert())
    hooks = inbound(record)
    headers, body = signed("/twilio/sms", {"From": PHONES["V-01"], "Body": "ok"}, "wrong")
    assert hooks.sms_reply("POST", "/twilio/sms", headers, body).status == 403
    headers, body = signed("/twilio/sms", {"From": "+15005550006", "Body": "ok"})
    assert hooks.sms_reply("POST", "/twilio/sms", headers, body).status == 200
    assert record.latest_alerts()[0]["state"] == "open"


def test_operator_acknowledgement_is_recorded_in_one_commit(record):
    store(record, alert())
    ref = texts.reference(alert()["id"])
    acked = acknowledge(record, ref, "duty-operator", "called the victim", T0 + 50)
    assert acked["state"] == "acknowledged" and acked["id"] == alert()["id"]
    assert acked["detail"] == "acknowledged by duty-operator: called the victim"
    history = record.alert_history(alert()["id"])
    assert [(e["kind"], e["chain"]) for e in history] == [
        ("alert", "case:C-0001"), ("action", "case:C-0001"), ("alert", "case:C-0001")]
    assert history[1]["recorded_at"] == history[2]["recorded_at"]
    again = acknowledge(record, alert()["id"], "supervisor", "", T0 + 80)
    assert again == acked and len(record.alert_history(alert()["id"])) == 4
    assert record.verify() == []
    with pytest.raises(AckError, match="no such alert"):
        acknowledge(record, "ffffff", "duty-operator", "", T0)
    store(record, alert(state="resolved"))
    with pytest.raises(AckError, match="already resolved"):
        acknowledge(record, alert()["id"], "duty-operator", "", T0)


def test_a_replayed_reply_does_nothing_even_after_a_restart(record):
    for n in (1, 2):
        store(record, alert(n, at=T0 + n))
        texted(record, alert(n, at=T0 + n))
    sid = "SM" + "7" * 32
    assert b"Tagwatch" in reply(inbound(record), "ok", sid).body  # acknowledges alert 2
    states = {a["id"]: a["state"] for a in record.latest_alerts()}
    assert states[alert(2)["id"]] == "acknowledged" and states[alert(1)["id"]] == "open"
    # The same signed request again, to this process and to a new one (a restart):
    # alert 1, now the latest open one, stays open; nothing is recorded twice.
    for hooks in (inbound(record), inbound(record)):
        answer = reply(hooks, "ok", sid)
        assert answer.status == 200 and b"Tagwatch" not in answer.body
    states = {a["id"]: a["state"] for a in record.latest_alerts()}
    assert states[alert(1)["id"]] == "open"
    assert len(record.alert_history(f"sms:{sid}")) == 1
    assert record.verify() == []


def test_a_reply_acknowledges_only_alerts_texted_to_that_victim(record):
    two = {PHONES["V-01"]: ("C-0001", "V-01"), PHONES["V-02"]: ("C-0001", "V-02")}
    hooks = TwilioInbound(TOKEN, BASE, record, two, clock=lambda: T0 + 30)
    store(record, alert(1, at=T0 + 1))
    store(record, alert(2, at=T0 + 2))
    store(record, alert(3, at=T0 + 3))  # the newest: texted to nobody
    texted(record, alert(1, at=T0 + 1))
    texted(record, alert(2, at=T0 + 2), victim="V-02")
    # V-02 was texted alert 2 only: its reply acknowledges alert 2, never alert 3.
    assert reply(hooks, "fine", "SMa" + "0" * 31, PHONES["V-02"]).status == 200
    # V-01 names alert 1's reference: alert 1, although alert 3 is newer.
    ref = texts.reference(alert(1)["id"])
    assert ref.encode() in reply(hooks, f"{ref} seen", "SMb" + "0" * 31).body
    states = {a["id"]: a["state"] for a in record.latest_alerts()}
    assert states == {alert(1)["id"]: "acknowledged", alert(2)["id"]: "acknowledged",
                      alert(3)["id"]: "open"}
    # Nothing left that was texted to V-01: a further reply acknowledges nothing.
    assert b"Tagwatch" not in reply(hooks, "ok", "SMc" + "0" * 31).body
    assert {a["id"]: a["state"] for a in record.latest_alerts()} == states
