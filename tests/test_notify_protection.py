"""Victim notices of degraded and restored protection (DESIGN 3.4 notify_degraded,
degraded_notify_s), in the pure policy: when they go, when they do not, the rate
limit, and a ledger checkpoint in between that sends nothing twice."""

from __future__ import annotations

import json

from tagwatch.notify import texts
from tagwatch.notify.policy import PolicySettings, SmsLedger, degraded_notices, deliveries_for
from tagwatch.wire import rfc3339
from zones.casefile import parse_case

T0 = 1_780_000_000.0
PHONE = "+447700900123"


def case(notify: bool = True, texts_: dict | None = None, language: str = "en"):
    meta = {"id": "C-1", "tags": ["T-1"], "timezone": "Europe/London", "language": language,
            "victims": [{"id": "V-1", "phone": PHONE, "notify_degraded": notify}]}
    if texts_:
        meta["texts"] = texts_
    return parse_case({"type": "FeatureCollection", "case": meta, "features": []}, "C-1.geojson")


SETTINGS = PolicySettings(sms_enabled=True, default_degraded_notify_s=900.0)


def record(state: str, at: float, kind: str = "protection.degraded", rid: str = "d1",
           severity: str = "warning") -> dict:
    return {"id": rid, "type": kind, "severity": severity, "state": state, "case": "C-1",
            "tag": "T-1", "zone": None, "victim": "V-1", "ts": rfc3339(at),
            "raised": rfc3339(at), "lat": None, "lon": None, "acc": None, "escalation": 0,
            "detail": "protection degraded: no_comms (the tag is silent)"}


def texts_of(items) -> list[str]:
    return [i.body["notice"] for i in items]


def test_a_notice_after_degraded_notify_s_and_one_at_the_restore():
    c, ledger = case(), SmsLedger()
    assert deliveries_for(record("open", T0), c, SETTINGS, ledger) == []
    assert degraded_notices(T0 + 899, {"C-1": c}, SETTINGS, ledger) == []
    (sms,) = degraded_notices(T0 + 901, {"C-1": c}, SETTINGS, ledger)
    assert (sms.channel, sms.target, sms.alert_id, sms.not_before) == ("sms", PHONE, "d1", T0 + 901)
    assert sms.body["text"] == texts.render("protection.degraded", "d1")
    assert len(sms.body["text"]) <= 160 and "999" in sms.body["text"]
    assert degraded_notices(T0 + 2000, {"C-1": c}, SETTINGS, ledger) == []  # once
    assert deliveries_for(record("updated", T0 + 950), c, SETTINGS, ledger) == []
    (back,) = deliveries_for(record("resolved", T0 + 1000), c, SETTINGS, ledger)
    assert back.body["notice"] == "protection.restored" and back.target == PHONE
    assert back.body["text"] == texts.render("protection.restored", "d1")


def test_none_when_restored_before_the_wait_or_not_opted_in():
    c, ledger = case(), SmsLedger()
    deliveries_for(record("open", T0), c, SETTINGS, ledger)
    assert deliveries_for(record("resolved", T0 + 100), c, SETTINGS, ledger) == []
    assert degraded_notices(T0 + 5000, {"C-1": c}, SETTINGS, ledger) == []
    out, ledger = case(notify=False), SmsLedger()
    deliveries_for(record("open", T0), out, SETTINGS, ledger)
    assert degraded_notices(T0 + 5000, {"C-1": out}, SETTINGS, ledger) == []
    off = PolicySettings(sms_enabled=False)
    deliveries_for(record("open", T0), c, off, ledger)
    assert degraded_notices(T0 + 5000, {"C-1": c}, off, ledger) == []


def test_never_together_with_an_alert_sms_of_the_same_episode():
    c, ledger = case(), SmsLedger()
    breach = record("open", T0 + 10, kind="proximity", rid="p1", severity="critical")
    assert [i.body["text"][:14] for i in deliveries_for(breach, c, SETTINGS, ledger)] == [
        "Tagwatch alert"]
    deliveries_for(record("open", T0 + 60, severity="critical"), c, SETTINGS, ledger)
    assert degraded_notices(T0 + 2000, {"C-1": c}, SETTINGS, ledger) == []
    assert deliveries_for(record("resolved", T0 + 3000), c, SETTINGS, ledger) == []


def test_notices_count_against_the_rate_limit():
    c, ledger = case(), SmsLedger()
    ledger.sends["C-1/V-1"] = [T0 + 850, T0 + 860, T0 + 870]  # three SMS (summaries, say)
    deliveries_for(record("open", T0), c, SETTINGS, ledger)
    (sms,) = degraded_notices(T0 + 901, {"C-1": c}, SETTINGS, ledger)
    assert sms.not_before == T0 + 850 + SETTINGS.sms_window_s
    assert len(ledger.sends["C-1/V-1"]) == 4


def test_the_case_wait_language_and_texts():
    c = case(texts_={"protection.degraded": "Ref {ref}: reduced. Call {emergency}."})
    settings = PolicySettings(sms_enabled=True, degraded_notify_s={"C-1": 60.0},
                              case_texts={"C-1": dict(c.texts)})
    ledger = SmsLedger()
    deliveries_for(record("open", T0), c, settings, ledger)
    (sms,) = degraded_notices(T0 + 61, {"C-1": c}, settings, ledger)
    assert sms.body["text"] == "Ref D1: reduced. Call 999."


def test_a_ledger_checkpoint_in_between_sends_nothing_twice():
    c, ledger = case(), SmsLedger()
    deliveries_for(record("open", T0), c, SETTINGS, ledger)
    saved = SmsLedger.from_bytes(ledger.to_bytes())  # a restart before the notice
    assert texts_of(degraded_notices(T0 + 901, {"C-1": c}, SETTINGS, saved)) == [
        "protection.degraded"]
    again = SmsLedger.from_bytes(saved.to_bytes())  # a restart after it
    assert degraded_notices(T0 + 1500, {"C-1": c}, SETTINGS, again) == []
    assert deliveries_for(record("open", T0), c, SETTINGS, again) == []  # redelivered
    assert degraded_notices(T0 + 1600, {"C-1": c}, SETTINGS, again) == []
    assert texts_of(deliveries_for(record("resolved", T0 + 2000), c, SETTINGS, again)) == [
        "protection.restored"]
    assert deliveries_for(record("resolved", T0 + 2000), c, SETTINGS, again) == []


def test_a_ledger_from_before_the_notices_loads():
    old = json.dumps({"texted": {"a": T0}, "sends": {"C-1/V-1": [T0]}, "summary_at": {}})
    ledger = SmsLedger.from_bytes(old.encode())
    assert (ledger.degraded, ledger.noticed, ledger.alerted) == ({}, {}, {})
