"""Notification policy, texts and escalation: pure functions fed with records."""

from __future__ import annotations

import json

import pytest

from tagwatch.notify import texts
from tagwatch.notify.escalation import Escalation, EscalationSettings
from tagwatch.notify.policy import PolicySettings, SmsLedger, deliveries_for
from tagwatch.notify.records import escalation_level
from tagwatch.wire import rfc3339
from zones.casefile import parse_case

T0 = 1_795_860_930.0  # 2026-11-28T10:15:30Z
PHONES = {"V-01": "+447700900001", "V-02": "+447700900002"}
SETTINGS = PolicySettings(sms_enabled=True, police_enabled=True)


def square(zone: str, victim: str | None, lon: float) -> dict:
    ring = [[lon, 51.5], [lon + 0.001, 51.5], [lon + 0.001, 51.501], [lon, 51.501], [lon, 51.5]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"zone": zone, "kind": "exclusion", "victim": victim}}


CASE = parse_case({
    "type": "FeatureCollection",
    "case": {"id": "C-0001", "tags": ["T-1001"], "timezone": "Europe/London",
             "victims": [{"id": "V-01", "phone": PHONES["V-01"]},
                         {"id": "V-02", "phone": PHONES["V-02"]}, {"id": "V-03"}]},
    "features": [square("home", "V-01", -0.128), square("work", "V-02", -0.100)],
}, "test-case.geojson")


def alert(n: int = 1, at: float = T0, **fields: object) -> dict:
    record = {
        "id": f"{n:02x}ab12cd34ef56ab12cd34ef"[:24], "type": "zone.breach",
        "severity": "critical", "state": "open", "case": "C-0001", "tag": "T-1001",
        "zone": "home", "victim": None, "ts": rfc3339(at), "raised": rfc3339(at + 0.41),
        "lat": 51.50721, "lon": -0.12761, "acc": 8.0, "distance_m": -12.4,
        "closing_mps": 6.1, "eta_s": None, "confidence": "confirmed",
        "escalation": 0, "detail": "inside exclusion zone home by 12 m",
    }
    return {**record, **fields}


def channels(items: list) -> list[tuple[str, str]]:
    return [(i.channel, i.target) for i in items]


def test_confirmed_breach_texts_the_zone_victim_once_and_tells_police_every_time():
    ledger = SmsLedger()
    first = deliveries_for(alert(), CASE, SETTINGS, ledger)
    assert channels(first) == [("sms", PHONES["V-01"]), ("police", "police")]
    text = first[0].body["text"]
    assert texts.reference(alert()["id"]) in text and len(text) <= 160
    assert first[0].not_before == pytest.approx(T0 + 0.41)
    again = deliveries_for(alert(state="updated", raised=rfc3339(T0 + 5)), CASE, SETTINGS,
                           ledger)
    assert channels(again) == [("police", "police")]


@pytest.mark.parametrize(("fields", "victims"), [
    ({"severity": "warning", "confidence": "probable"}, []),  # probable breach: no SMS yet
    ({"type": "zone.warning", "severity": "warning"}, []),
    ({"type": "approach", "severity": "warning"}, []),
    ({"type": "approach", "severity": "critical"}, ["V-01"]),
    ({"type": "proximity", "zone": None, "victim": "V-02"}, ["V-02"]),
    ({"type": "curfew.breach", "zone": "work"}, ["V-02"]),
    ({"type": "tag.tamper", "zone": None}, []),
    ({"zone": None}, ["V-01", "V-02"]),  # nobody named: every victim with a phone
    ({"state": "resolved"}, []),
    ({"state": "acknowledged"}, []),
])
def test_who_gets_an_sms(fields, victims):
    items = deliveries_for(alert(**fields), CASE, SETTINGS, SmsLedger())
    assert [i.target for i in items if i.channel == "sms"] == [PHONES[v] for v in victims]
    assert [i.channel for i in items].count("police") == 1


def test_without_channels_configured_nothing_is_queued():
    assert deliveries_for(alert(), CASE, PolicySettings(), SmsLedger()) == []


def test_bodies_hold_no_position_and_no_other_victims_phone():
    records = [alert(n, type=t, severity="critical")
               for n, t in enumerate(["zone.breach", "proximity", "approach", "curfew.breach"])]
    records.append(alert(9, state="escalated", escalation=2, detail="escalation level 2: x"))
    for record in records:
        for item in deliveries_for(record, CASE, SETTINGS, SmsLedger()):
            body = json.dumps(item.body)
            for leak in ("51.50721", "0.12761", "-12.4", "6.1", "home"):
                assert leak not in body, (item.channel, leak)
            assert not {"lat", "lon", "acc", "distance_m", "detail"} & item.body.keys()
            assert not any(phone in body for phone in PHONES.values())  # not even its own


def test_rate_limit_per_victim_then_one_summary_later():
    ledger, settings = SmsLedger(), PolicySettings(sms_enabled=True, sms_per_window=3)
    sent = [deliveries_for(alert(n, at=T0 + 60 * n, zone=None, victim="V-01"), CASE,
                           settings, ledger) for n in range(1, 6)]
    assert [len(s) for s in sent] == [1, 1, 1, 1, 0]
    summary = sent[3][0]
    assert summary.body["text"].startswith(f"Tagwatch {texts.reference(alert(4)['id'])}: more")
    assert summary.not_before == pytest.approx(T0 + 60 + 0.41 + 600)
    # V-02 has its own budget
    other = deliveries_for(alert(7, at=T0 + 300, zone=None, victim="V-02"), CASE, settings,
                           ledger)
    assert [i.body["text"][:14] for i in other] == ["Tagwatch alert"]
    # once the window has passed, alerts are texted again
    later = deliveries_for(alert(8, at=T0 + 2000, zone=None, victim="V-01"), CASE, settings,
                           ledger)
    assert len(later) == 1 and "alert" in later[0].body["text"]
    assert SmsLedger.from_bytes(ledger.to_bytes()) == ledger


def test_texts_are_configurable_per_case_and_refuse_unsafe_placeholders():
    override = {"zone.breach": "ALERTE {ref}: zone interdite. Appelez le {emergency}."}
    texts.check_templates(override, "test")
    settings = PolicySettings(sms_enabled=True, case_texts={"C-0001": override},
                              emergency="17")
    item = deliveries_for(alert(), CASE, settings, SmsLedger())[0]
    assert item.body["text"] == f"ALERTE {texts.reference(alert()['id'])}: zone interdite. " \
                                "Appelez le 17."
    with pytest.raises(texts.TextError, match="'lat' is not allowed"):
        texts.check_templates({"proximity": "near {lat}"}, "cases/C-0001.toml")
    with pytest.raises(texts.TextError, match="unknown key"):
        texts.check_templates({"breach": "x"}, "cases/C-0001.toml")


def test_every_default_text_fits_one_sms():
    for key in texts.KEYS:
        if key != "call":
            assert len(texts.render(key, "abcdef" * 4)) <= 160, key


def test_escalated_level_two_calls_the_victim_level_one_does_not():
    level1 = alert(state="escalated", escalation=1, detail="escalation level 1: not acknowledged")
    level2 = alert(state="escalated", escalation=2, detail="escalation level 2: not acknowledged")
    assert channels(deliveries_for(level1, CASE, SETTINGS, SmsLedger())) == [
        ("police", "police")]
    items = deliveries_for(level2, CASE, SETTINGS, SmsLedger())
    assert channels(items) == [("call", PHONES["V-01"]), ("police", "police")]
    assert " ".join(texts.reference(alert()["id"])) in items[0].body["text"]
    assert items[1].body["level"] == 2


# --- escalation -----------------------------------------------------------------------

def test_unacknowledged_alert_escalates_to_police_then_to_a_call():
    esc = Escalation(EscalationSettings(ack_timeout_s=120))
    esc.observe(alert())
    assert esc.tick(T0 + 119.9) == []
    (first,) = esc.tick(T0 + 120)
    assert first["state"] == "escalated" and escalation_level(first) == 1
    assert first["ts"] == rfc3339(T0 + 120) and first["id"] == alert()["id"]
    esc.observe(first)  # the daemon feeds back what it published
    assert esc.tick(T0 + 200) == []
    (second,) = esc.tick(T0 + 250)
    assert escalation_level(second) == 2 and second["ts"] == rfc3339(T0 + 240)
    assert [i.channel for i in deliveries_for(second, CASE, SETTINGS, SmsLedger())] == [
        "call", "police"]
    assert esc.tick(T0 + 10_000) == []  # level 2 is the last


def test_a_late_tick_fires_every_level_due_in_order():
    esc = Escalation(EscalationSettings(ack_timeout_s=120))
    esc.observe(alert())
    assert [escalation_level(r) for r in esc.tick(T0 + 1000)] == [1, 2]


def test_an_acknowledgement_stops_the_clock():
    esc = Escalation(EscalationSettings(ack_timeout_s=120))
    esc.observe(alert(1))
    esc.observe(alert(2))
    assert esc.acknowledge(alert(1)["id"], "duty-operator", "calling", T0 + 60)
    esc.observe(alert(2, state="acknowledged"))
    assert esc.tick(T0 + 1000) == []
    assert esc.pending() == {}


def test_warnings_have_no_clock():
    esc = Escalation()
    esc.observe(alert(severity="warning", confidence="probable"))
    assert esc.tick(T0 + 10_000) == []


def test_an_sms_not_delivered_in_time_escalates_to_police():
    esc = Escalation(EscalationSettings(ack_timeout_s=3600, sms_delivery_timeout_s=300))
    esc.observe(alert(1))
    esc.observe(alert(2))
    esc.sms_accepted(alert(1)["id"], T0 + 1)
    esc.sms_accepted(alert(2)["id"], T0 + 1)
    esc.delivery_status(alert(2)["id"], "delivered", T0 + 5)
    assert esc.tick(T0 + 300) == []
    (late,) = esc.tick(T0 + 301)
    assert late["id"] == alert(1)["id"] and escalation_level(late) == 1
    assert "not delivered within 300 s" in late["detail"]


def test_a_failed_delivery_escalates_at_once_and_state_survives_a_checkpoint():
    esc = Escalation(EscalationSettings(ack_timeout_s=3600))
    esc.observe(alert())
    esc.sms_accepted(alert()["id"], T0 + 1)
    esc.delivery_status(alert()["id"], "undelivered", T0 + 20)
    restored = Escalation.from_bytes(esc.to_bytes(), esc.settings)
    (record,) = restored.tick(T0 + 20)
    assert "undelivered" in record["detail"] and record["ts"] == rfc3339(T0 + 20)


def test_the_level_reached_is_a_field_kept_by_every_later_record():
    """DESIGN 3.3 `escalation`: the escalated record carries its new level, and the
    engine's later records (which know nothing of escalation) are stamped with the
    level reached, past the acknowledgement, until the alert is resolved."""
    esc = Escalation(EscalationSettings(ack_timeout_s=120))
    esc.observe(alert())
    first, second = esc.tick(T0 + 240)
    assert (first["escalation"], second["escalation"]) == (1, 2)
    assert list(second) == list(alert())  # the 3.3 keys, in order, none added
    for record in (first, second):
        esc.observe(record)
    updated = esc.stamp(alert(state="updated", distance_m=-30.0))
    assert updated["escalation"] == 2 and updated["distance_m"] == -30.0
    later = deliveries_for(updated, CASE, SETTINGS, SmsLedger())
    assert "call" not in [i.channel for i in later]  # the victim was called once, at level 2
    esc.observe(alert(state="acknowledged", escalation=2))
    restored = Escalation.from_bytes(esc.to_bytes(), esc.settings)
    resolved = restored.stamp(alert(state="resolved"))
    assert resolved["escalation"] == 2
    restored.observe(resolved)
    assert restored.stamp(alert(state="updated"))["escalation"] == 0  # a new episode
    assert restored.stamp(alert(2))["escalation"] == 0  # another alert: untouched


def test_a_record_without_the_field_or_a_level_in_detail_only_is_level_zero():
    assert escalation_level(alert(state="escalated", detail="escalation level 2: x")) == 0
    old = {k: v for k, v in alert().items() if k != "escalation"}
    assert escalation_level(old) == 0
    old_checkpoint = json.dumps({alert()["id"]: {
        "record": alert(), "level": 1, "deadline": T0 + 240}}).encode()
    restored = Escalation.from_bytes(old_checkpoint, EscalationSettings(ack_timeout_s=120))
    assert restored.stamp(alert(state="updated"))["escalation"] == 1
    (second,) = restored.tick(T0 + 240)
    assert second["escalation"] == 2


def test_the_daemons_effects_stamp_the_engines_later_records_with_the_level():
    """The engine's `updated` record after an escalation goes to the record and to MQTT
    with the level reached, not the engine's 0 (tagwatch.daemon.effects)."""
    from tagwatch.daemon.effects import EffectsBuilder, Notify
    from tagwatch.engine.alerts import AlertRecord
    from tagwatch.pipeline import Result
    from tagwatch.wire import Topics

    esc = Escalation(EscalationSettings(ack_timeout_s=120))
    builder = EffectsBuilder(Topics(), Notify(PolicySettings(), SmsLedger(), esc),
                             lambda: {"C-0001": CASE}, lambda tag: ["C-0001"])
    builder.from_records([alert()], T0)
    builder.from_records(esc.tick(T0 + 120), T0 + 120)
    engine = AlertRecord(**alert(state="updated", ts=rfc3339(T0 + 130)))
    fx = builder.from_result(Result(records=[engine]), {}, T0 + 130)
    (record,) = fx.records
    assert record["escalation"] == 1 and record["state"] == "updated"
    (entry,) = [e for e in fx.batch.entries if e.kind == "alert"]
    (item,) = fx.batch.outbox
    assert entry.body["escalation"] == 1
    assert json.loads(item.body["payload"])["escalation"] == 1


def test_an_acknowledged_alerts_later_updates_start_no_clock_again():
    """"Stops the clock for good": a proximity acknowledged, whose victim position then
    went stale and fresh again (an `updated` critical record), is not escalated again,
    across a checkpoint too; a probable breach acknowledged as a warning and then
    confirmed (critical) gets its clock."""
    esc = Escalation(EscalationSettings(ack_timeout_s=120))
    esc.observe(alert(1))
    esc.observe(alert(1, state="acknowledged"))
    esc.observe(alert(2))
    assert esc.acknowledge(alert(2)["id"], "victim:V-01", "", T0 + 5)
    restored = Escalation.from_bytes(esc.to_bytes(), esc.settings)
    for n in (1, 2):
        restored.observe(alert(n, at=T0 + 60, state="updated"))
    restored.observe(alert(3, severity="warning", confidence="probable"))
    restored.observe(alert(3, state="acknowledged", severity="warning"))
    restored.observe(alert(3, at=T0 + 30, state="updated"))  # confirmed: critical now
    assert [r["id"] for r in restored.tick(T0 + 10_000)] == [alert(3)["id"]] * 2


def test_a_partitions_share_of_the_notify_state_moves_whole_and_only_it():
    """Cluster mode (issue 20): the SMS ledger and escalation clocks split by alert and
    by victim, one share per partition; a share taken over runs as it would have, and a
    share dropped leaves nothing of it (no clock of an alert owned elsewhere runs)."""
    ledger, esc = SmsLedger(), Escalation(EscalationSettings(ack_timeout_s=120))
    mine, theirs = alert(1), alert(2)
    for record in (mine, theirs):
        deliveries_for(record, CASE, SETTINGS, ledger)
        esc.observe(record)
    ledger.degraded["dd"] = ["C-0001", "V-01", T0]
    is_mine = mine["id"].__eq__

    def victim_is_mine(key: str) -> bool:
        return key == "C-0001/V-01"

    share = SmsLedger.from_bytes(ledger.part(is_mine, victim_is_mine).to_bytes())
    assert set(share.texted) == {mine["id"]} and set(share.sends) == {"C-0001/V-01"}
    assert set(share.degraded) == {"dd"}  # a notice goes with its victim
    clocks = Escalation.from_bytes(esc.part(is_mine).to_bytes(), esc.settings)
    assert set(clocks.pending()) == {mine["id"]}

    ledger.drop(is_mine, victim_is_mine)
    esc.drop(is_mine)
    assert mine["id"] not in ledger.texted and "dd" not in ledger.degraded
    assert [r["id"] for r in esc.tick(T0 + 120)] == [theirs["id"]]

    new_owner, new_ledger = Escalation(esc.settings), SmsLedger()
    new_owner.take_part(clocks)
    new_ledger.take(share)
    assert deliveries_for({**mine, "state": "updated"}, CASE, SETTINGS, new_ledger) == [
        i for i in deliveries_for({**mine, "state": "updated"}, CASE, SETTINGS, SmsLedger())
        if i.channel == "police"]  # texted already: no second SMS
    (first,) = new_owner.tick(T0 + 120)  # the old owner's deadline, not a new clock
    assert first["id"] == mine["id"] and escalation_level(first) == 1
