"""Protection status per victim (DESIGN 3.3 protection.degraded / protection.restored),
through the pipeline in event time, so replay and the daemon give the same records.

The default case (tests.tracks.home_case): tag T-1, exclusion zone "home", victim V-1
whose phone is device VD-1 (victim_fresh_s 180, no_comms_s 900 by default)."""

from __future__ import annotations

from tagwatch.engine.alerts import alert_id
from tagwatch.engine.core import Engine
from tagwatch.wire import rfc3339
from tests.tracks import (
    CASE,
    TAG,
    VICTIM,
    at_distance,
    fix,
    pipeline,
    run,
    tag_msg,
    utc,
    victim_msg,
)

T0 = utc("2026-07-06T10:00:00Z")
FAR = at_distance(100, 8000)  # far from home: warning, not critical
NEAR = at_distance(100, 600)  # within near_m (1000) of home: critical
KEY = f"{CASE}/{VICTIM}"


def summary(records) -> list[tuple]:
    return [(r.type, r.state, r.severity, r.ts[11:], r.detail.split(": ", 1)[-1]) for r in records]


def reasons(records) -> list[list[str]]:
    return [[w.split(" ")[0] for w in r.detail.split(": ", 1)[1].split("; ")] for r in records
            if r.type == "protection.degraded" and r.state != "resolved"]


def test_unknown_until_the_tag_is_heard_then_protected_without_a_record():
    p = pipeline()
    assert p.engine.protection_of(KEY).status == "unknown"
    r = run([victim_msg(fix(T0, FAR)), tag_msg(fix(T0 + 10, FAR, seq=1))], p)
    assert r.protection == []
    assert p.engine.protection_of(KEY).status == "protected"


def test_a_silent_tag_degrades_protection_at_the_watchdog_deadline_and_fixes_restore_it():
    p = pipeline()
    seen = run([victim_msg(fix(T0, NEAR)), tag_msg(fix(T0 + 10, NEAR, seq=1))], p)
    assert seen.protection == []
    # The victim's phone keeps reporting (it moves the event clock): the tag is silent.
    quiet = run([victim_msg(fix(T0 + 60 * k, NEAR)) for k in range(1, 17)], p)
    degraded = quiet.protection
    assert summary(degraded) == [
        ("protection.degraded", "open", "critical", "10:15:10Z", "no_comms (the tag is silent)")
    ]
    d = degraded[0]
    assert (d.case, d.tag, d.victim, d.zone, d.lat, d.distance_m) == (
        CASE, TAG, VICTIM, None, None, None)
    assert d.id == alert_id(CASE, TAG, "protection.degraded", VICTIM, T0 + 910)
    state = p.engine.protection_of(KEY)
    assert (state.status, state.reasons) == ("degraded", ["no_comms"])
    back = run([tag_msg(fix(T0 + 970, NEAR, seq=2))], p).protection
    assert [(x.type, x.state, x.severity, x.ts[11:]) for x in back] == [
        ("protection.degraded", "resolved", "critical", "10:16:10Z"),
        ("protection.restored", "open", "info", "10:16:10Z"),
    ]
    assert back[0].id == d.id and back[1].victim == VICTIM
    assert p.engine.protection_of(KEY).status == "protected"


def test_far_from_everything_a_silent_tag_is_a_warning():
    p = pipeline()
    away = at_distance(100, 5000)  # the victim 3 km from the tag, the tag 8 km from home
    run([victim_msg(fix(T0, away)), tag_msg(fix(T0 + 10, FAR, seq=1))], p)
    r = run([victim_msg(fix(T0 + 60 * k, away)) for k in range(1, 17)], p)
    assert [(x.type, x.severity) for x in r.protection] == [("protection.degraded", "warning")]


def test_the_victims_device_going_stale_degrades_and_its_next_fix_restores():
    p = pipeline()
    run([victim_msg(fix(T0, FAR)), tag_msg(fix(T0 + 10, FAR, seq=1))], p)
    # The tag reports every minute far away (the quiet path); the phone stops at T0.
    r = run([tag_msg(fix(T0 + 10 + 60 * k, FAR, seq=1 + k)) for k in range(1, 5)], p)
    assert summary(r.protection) == [(
        "protection.degraded", "open", "warning", "10:03:10Z",
        "device_stale (the victim's device has no recent position)",
    )]
    back = run([victim_msg(fix(T0 + 260, FAR))], p).protection
    assert [(x.type, x.state) for x in back] == [
        ("protection.degraded", "resolved"), ("protection.restored", "open")]


def test_a_device_that_never_reported_and_a_coarse_one_are_reasons():
    p = pipeline()
    first = run([tag_msg(fix(T0, FAR, seq=1))], p).protection
    assert reasons(first) == [["device_stale"]]
    coarse = run([victim_msg(fix(T0 + 5, FAR, acc=300.0))], p).protection
    assert [(x.state, reasons([x])) for x in coarse] == [("updated", [["device_coarse"]])]
    assert coarse[0].id == first[0].id  # one episode while reasons change
    good = run([victim_msg(fix(T0 + 10, FAR))], p).protection
    assert [(x.type, x.state) for x in good] == [
        ("protection.degraded", "resolved"), ("protection.restored", "open")]


def test_battery_and_tamper_are_reasons_and_each_change_is_an_update():
    p = pipeline()
    run([victim_msg(fix(T0, FAR)), tag_msg(fix(T0 + 1, FAR, seq=1, bat=60))], p)
    r = run([
        victim_msg(fix(T0 + 20, FAR)),
        tag_msg(fix(T0 + 21, FAR, seq=2, bat=12)),
        tag_msg(fix(T0 + 31, FAR, seq=3, bat=12, strap="tamper")),
        tag_msg(fix(T0 + 41, FAR, seq=4, bat=30, strap="ok")),
    ], p)
    assert [(x.type, x.state) for x in r.protection] == [
        ("protection.degraded", "open"),
        ("protection.degraded", "updated"),
        ("protection.degraded", "resolved"),
        ("protection.restored", "open"),
    ]
    assert reasons(r.protection) == [["low_battery"], ["low_battery", "tampered"]]


def test_a_restart_from_checkpoints_resumes_the_episode_and_repeats_nothing():
    p = pipeline()
    run([victim_msg(fix(T0, NEAR)), tag_msg(fix(T0 + 10, NEAR, seq=1))], p)
    opened = run([victim_msg(fix(T0 + 60 * k, NEAR)) for k in range(1, 17)], p).protection
    saved = p.checkpoints()
    assert f"victim:{KEY}" in saved
    again = pipeline()
    again.restore(saved)
    assert again.engine.protection_of(KEY).status == "degraded"
    more = run([victim_msg(fix(T0 + 1020, NEAR))], again)  # still silent: nothing new
    assert more.protection == []
    back = run([tag_msg(fix(T0 + 1030, NEAR, seq=2))], again).protection
    assert [(x.type, x.state) for x in back] == [
        ("protection.degraded", "resolved"), ("protection.restored", "open")]
    assert back[0].id == opened[0].id


def test_checkpoints_from_before_protection_still_restore():
    p = pipeline()
    run([victim_msg(fix(T0, FAR)), tag_msg(fix(T0 + 10, FAR, seq=1))], p)
    old = {k: v for k, v in p.checkpoints().items() if not k.startswith("victim:")}
    again = pipeline()
    again.restore(old)
    assert again.engine.protection_of(KEY).status == "unknown"
    r = run([tag_msg(fix(T0 + 70, FAR, seq=2, bat=5))], again)
    assert reasons(r.protection) == [["low_battery"]]


def test_one_by_one_equals_one_batch():
    msgs = [victim_msg(fix(T0, NEAR))] + [
        tag_msg(fix(T0 + 10 + 60 * k, NEAR, seq=k, bat=max(5, 40 - 10 * k))) for k in range(6)
    ] + [victim_msg(fix(T0 + 600, NEAR))]
    one = run(msgs).protection
    batch = run([msgs]).protection
    assert one and [(x.id, x.state, x.detail) for x in one] == [
        (x.id, x.state, x.detail) for x in batch]
    assert all(x.ts == rfc3339(T0 + 10 + 60 * 3) for x in one[:1])


def test_the_engine_keeps_protection_per_victim_of_every_case():
    engine = pipeline().engine
    assert isinstance(engine, Engine)
    assert set(engine.protected) == {KEY}
