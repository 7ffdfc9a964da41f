"""The rules, one alert type at a time, on small scripted tracks (DESIGN 3.3, 3.6).

The default case (tests.tracks.home_case): tag T-1, one 100 m exclusion circle
"home" with warn_m 250, victim V-1 with device VD-1. `at_distance(100, d)` is
a point d metres from home's boundary (negative inside).
"""

from __future__ import annotations

import orjson
import pytest

from tagwatch.engine.alerts import encode
from tagwatch.pipeline import Inbound
from tests.tracks import (
    CASE,
    CENTRE,
    TAG,
    VICTIM,
    at_distance,
    case_doc,
    circle,
    fix,
    line,
    offset,
    one_by_one,
    pipeline,
    run,
    tag_msg,
    times,
    track,
    utc,
    victim_msg,
    zoneset,
)

T0 = utc("2026-07-06T10:00:00Z")  # a Monday, 11:00 in London
FAR = offset(CENTRE, 0, 8000)  # 8 km north of home: nothing there
WARN = b'{"cmd":"warn","text":"You are near a restricted area. Leave now."}'


def fixes_at(distances, acc=10.0, start=T0, every=30.0, seq0=0, radius=100.0):
    return [
        fix(start + every * i, at_distance(radius, d), acc, seq=seq0 + i)
        for i, d in enumerate(distances)
    ]


# -- zone.breach: confirmation ------------------------------------------------------------


def test_one_fix_inside_is_probable_and_the_next_confirms():
    r = run(one_by_one(fixes_at([300, -20, -20, -20])))
    breach = r.of("zone.breach")
    assert [(b.state, b.severity, b.confidence) for b in breach] == [
        ("open", "warning", "probable"),
        ("updated", "critical", "confirmed"),
    ]
    assert {b.id for b in breach} == {breach[0].id}
    assert (breach[0].case, breach[0].tag, breach[0].zone, breach[0].victim) == (
        CASE,
        TAG,
        "home",
        VICTIM,
    )
    assert breach[0].distance_m == pytest.approx(-20, abs=0.2)
    assert breach[0].ts == "2026-07-06T10:00:30Z" and breach[1].ts == "2026-07-06T10:01:00Z"


@pytest.mark.parametrize(
    "duplicate",
    [
        pytest.param(lambda f: dict(f), id="same message"),
        pytest.param(lambda f: {**f, "ts": f["ts"] + 5}, id="same seq"),
        pytest.param(lambda f: {k: v for k, v in f.items() if k != "seq"}, id="same ts+position"),
    ],
)
def test_a_duplicate_of_the_first_fix_inside_does_not_confirm(duplicate):
    first = fix(T0, at_distance(100, -20), seq=7)
    r = run([tag_msg(first), tag_msg(duplicate(first))])
    assert r.summary() == [("zone.breach", "open", "warning", "probable")]
    assert r.results[1].duplicates == 1


def test_jitter_across_the_boundary_is_one_breach_not_ten():
    r = run(one_by_one(fixes_at([-5 if i % 2 == 0 else 5 for i in range(40)], acc=10)))
    assert len(r.ids("zone.breach")) == 1
    assert r.summary("zone.breach") == [
        ("zone.breach", "open", "warning", "probable"),
        ("zone.breach", "updated", "critical", "confirmed"),
    ]
    assert r.of("zone.exit") == []


@pytest.mark.parametrize(
    "distances, accs, exit_at",
    [
        # two fixes clearly outside (by more than max(20, acc)): exit at the second
        ([-30, -30, 25, 25], [10] * 4, 3),
        # 15 m out is within the 20 m margin: ambiguous, it does not count
        ([-30, -30, 15, 25, 25], [10] * 5, 4),
        # 25 m out with acc 30 is within max(20, acc): breaks the run of clear fixes
        ([-30, -30, 25, 25, 25, 25], [10, 10, 10, 30, 10, 10], 5),
        # one clear fix then back inside: no exit
        ([-30, -30, 25, -5, 25], [10] * 5, None),
    ],
)
def test_exit_needs_two_consecutive_fixes_clearly_outside(distances, accs, exit_at):
    fixes = [
        fix(T0 + 30 * i, at_distance(100, d), a, seq=i)
        for i, (d, a) in enumerate(zip(distances, accs, strict=True))
    ]
    r = run(one_by_one(fixes))
    breach_id = r.of("zone.breach")[0].id
    exits = r.of("zone.exit")
    if exit_at is None:
        assert exits == [] and r.of("zone.breach")[-1].state != "resolved"
        return
    ts = r.of("zone.breach")[-1].ts
    assert r.of("zone.breach")[-1].state == "resolved" and r.of("zone.breach")[-1].id == breach_id
    assert [(e.state, e.severity, e.zone, e.ts) for e in exits] == [("open", "info", "home", ts)]
    assert ts == fixes_ts(exit_at)


def fixes_ts(i: int) -> str:
    from tagwatch.wire import rfc3339

    return rfc3339(T0 + 30 * i)


def test_a_probable_breach_that_never_confirms_resolves_without_exit():
    r = run(one_by_one(fixes_at([300, -20, 300, 300])))
    assert r.summary("zone.breach") == [
        ("zone.breach", "open", "warning", "probable"),
        ("zone.breach", "resolved", "warning", "probable"),
    ]
    assert r.of("zone.exit") == []


# -- zone.warning ---------------------------------------------------------------------------


def test_warning_ring_once_with_a_warn_command_and_hysteresis_on_leaving():
    distances = [400, 400, 200, 200, 240, 260, 200, 260, 275, 280, 290]
    r = run(one_by_one(fixes_at(distances, every=60)))
    warnings = r.of("zone.warning")
    assert [(w.state, w.severity, w.zone) for w in warnings] == [
        ("open", "warning", "home"),
        ("resolved", "warning", "home"),
    ]
    assert warnings[0].ts == fixes_ts_every(2, 60) and warnings[0].distance_m == 200
    # 260 then 200 then 260, 275 (not beyond 270), 280, 290: the 2nd fix beyond 270 ends it
    assert warnings[1].ts == fixes_ts_every(9, 60)
    assert [c for c in r.commands if c[1] == WARN] == [(TAG, WARN)]


def fixes_ts_every(i: int, every: float) -> str:
    from tagwatch.wire import rfc3339

    return rfc3339(T0 + every * i)


# -- approach -------------------------------------------------------------------------------


def drive(speed: float, every: float, start_m: float = 5000.0):
    """Straight at home's centre from `start_m` beyond the boundary, then stop inside."""
    step = speed * every
    n = int((start_m + 100) / step) + 1
    points = line(CENTRE, 270, start_m + 100, -step, n) + [CENTRE] * 3
    return track(points, times(T0, every, len(points)))


def test_a_drive_at_13_mps_warns_then_goes_critical_then_breaches():
    r = run(one_by_one(drive(13.0, 10.0)))
    kinds = [(x.type, x.state, x.severity) for x in r.records if x.type != "zone.warning"]
    assert kinds == [
        ("approach", "open", "warning"),
        ("approach", "updated", "critical"),
        ("zone.breach", "open", "warning"),
        ("approach", "resolved", "critical"),
        ("zone.breach", "updated", "critical"),
    ]
    opened, critical = r.of("approach")[:2]
    assert opened.zone == "home" and opened.victim == VICTIM
    assert opened.closing_mps == pytest.approx(13.0, abs=0.1)
    assert 1560 < opened.distance_m <= 3000
    assert opened.eta_s == pytest.approx(opened.distance_m / 13.0, abs=1)
    # critical at eta <= 120 s: within 13 * 120 = 1560 m, before the zone
    assert 0 < critical.distance_m <= 1560 and critical.eta_s <= 120
    assert critical.distance_m > 1560 - 13 * 10 - 1  # at the first fix that qualifies


def test_approach_warning_opens_at_the_first_fix_within_approach_max_m():
    """Engine bug: the approach window only collects fixes once the tag is within
    the rules' horizon of the zone, so the first 2 fixes inside 3 km are spent
    refilling it; at 10 s fixes the warning comes at 2660 m instead of 2920 m."""
    r = run(one_by_one(drive(13.0, 10.0)))
    assert r.of("approach")[0].distance_m == pytest.approx(2920, abs=1)


def test_a_drive_at_the_far_report_rate_still_warns_before_critical():
    """Engine bug (same cause): at 60 s fixes, the rate the engine itself asks of a
    tag far from zones, the first approach record is already critical (at 1100 m),
    so the warning step is skipped."""
    r = run(one_by_one(drive(13.0, 60.0)))
    assert r.summary("approach")[:2] == [
        ("approach", "open", "warning", None),
        ("approach", "updated", "critical", None),
    ]


@pytest.mark.parametrize("start", [170.0, 400.0, 2000.0])
def test_walking_away_gives_nothing(start):
    points = line(CENTRE, 270, 100 + start, 1.4 * 30, 120)
    fixes = track(points, times(T0, 30, 120))
    if start < 270:  # starts inside the warning ring: that ring's episode only
        assert run(one_by_one(fixes)).summary() == [
            ("zone.warning", "open", "warning", None),
            ("zone.warning", "resolved", "warning", None),
        ]
    else:
        assert run(one_by_one(fixes)).records == []


def test_standing_still_with_noise_near_a_zone_is_no_approach():
    import numpy as np

    from tests.tracks import noisy

    rng = np.random.default_rng(3)
    spot = at_distance(100, 600)
    points = noisy([spot] * 200, 8.0, rng)
    r = run(one_by_one(track(points, times(T0, 15, 200))))
    assert r.of("approach") == [] and r.of("zone.warning") == []


# -- schedules and curfew ---------------------------------------------------------------------

SCHOOL = case_doc(
    [circle("school", radius_m=150, warn_m=300, victim=VICTIM, schedule=["Mon-Fri 08:00-16:00"])]
)
CURFEW = case_doc(
    [circle("curfew", radius_m=80, kind="inclusion", schedule=["Mon-Sun 19:00-07:00"])]
)


@pytest.mark.parametrize(
    "start, expected",
    [
        ("2026-07-04T10:00:00+01:00", []),  # Saturday
        (
            "2026-07-06T10:00:00+01:00",  # Monday
            [
                ("zone.breach", "open", "warning", "probable"),
                ("zone.breach", "updated", "critical", "confirmed"),
            ],
        ),
    ],
)
def test_a_school_zone_is_only_breached_in_its_window(start, expected):
    points = line(CENTRE, 90, 150 + 500, -30, 25)  # walks in from 500 m out to the centre
    r = run(one_by_one(track(points, times(utc(start), 20, 25))), pipeline(SCHOOL))
    assert r.summary("zone.breach") == expected
    if not expected:
        assert r.records == []


def test_a_tag_inside_when_the_window_opens_breaches_at_the_next_fix():
    start = utc("2026-07-06T07:58:10+01:00")
    fixes = track([at_distance(150, -50)] * 8, times(start, 30, 8))
    r = run(one_by_one(fixes), pipeline(SCHOOL))
    assert [(x.ts, x.state, x.confidence) for x in r.of("zone.breach")] == [
        ("2026-07-06T07:00:10Z", "open", "probable"),  # 08:00:10 London, first fix after 08:00
        ("2026-07-06T07:00:40Z", "updated", "confirmed"),
    ]


@pytest.mark.parametrize(
    "start, expected",
    [
        (
            "2026-07-15T18:30:00Z",  # 19:30 London (BST)
            [
                ("curfew.breach", "open", "warning", "probable"),
                ("curfew.breach", "updated", "critical", "confirmed"),
            ],
        ),
        ("2026-07-15T17:30:00Z", []),  # 18:30 London
    ],
)
def test_curfew_in_july_uses_london_time(start, expected):
    fixes = track([at_distance(80, 300)] * 3, times(utc(start), 30, 3))
    r = run(one_by_one(fixes), pipeline(CURFEW))
    assert r.summary() == expected
    if expected:
        assert {(x.zone, x.case, x.tag) for x in r.records} == {("curfew", CASE, TAG)}
        assert r.records[0].distance_m == pytest.approx(300, abs=0.5)


# -- duplicates, redelivery, late fixes -----------------------------------------------------------


def test_the_same_message_twice_gives_no_second_alert():
    first, second = fixes_at([-20, -20])
    r = run([tag_msg(first), tag_msg(first), tag_msg(second), tag_msg(second)])
    assert len(r.records) == 2 and len(r.ids("zone.breach")) == 1
    assert [x.duplicates for x in r.results] == [0, 1, 0, 1]


def test_a_redelivered_batch_gives_no_second_alert():
    batch = fixes_at([-30] * 50, every=10)
    r = run([[tag_msg(batch)], [tag_msg(batch)]])
    assert r.summary() == [
        ("zone.breach", "open", "warning", "probable"),
        ("zone.breach", "updated", "critical", "confirmed"),
    ]
    assert r.results[1].records == [] and r.results[1].accepted == []


def test_a_batch_redelivered_after_other_messages_gives_no_late_breach():
    """Engine bug: duplicates are remembered for the last 16 messages and 32 fix keys
    only, so a 50-fix upload redelivered after 20 live messages is taken as 34 late
    fixes (duplicates 0) and raises a false zone.late_breach."""
    batch = fixes_at([-30] * 50, every=10)
    live = fixes_at([-30] * 20, every=10, start=T0 + 500, seq0=50)
    r = run([[tag_msg(batch)], one_by_one(live), [tag_msg(batch)]])
    assert r.of("zone.late_breach") == []


def test_a_reupload_of_a_buffer_with_one_more_fix_gives_no_late_breach():
    """Engine bug (same cause): a tag that re-sends its 50-fix buffer with one new fix
    (a different payload, so the message digest does not catch it) gets a
    zone.late_breach for fixes it already had accepted."""
    batch = fixes_at([-30] * 50, every=10)
    extra = fixes_at([-30], start=T0 + 500, seq0=50)
    r = run([[tag_msg(batch)], [tag_msg(batch + extra)]])
    assert r.of("zone.late_breach") == []
    assert r.results[1].duplicates == 50


def test_two_hour_old_fixes_inside_give_one_late_breach_only():
    live = fixes_at([2000, 2000, 2000])
    old = fixes_at([-30] * 10, start=T0 - 7200, seq0=100)
    r = run([one_by_one(live), [tag_msg(old)]])
    assert [(x.type, x.state, x.severity, x.zone, x.ts) for x in r.records] == [
        ("zone.late_breach", "open", "warning", "home", "2026-07-06T08:00:00Z")
    ]
    assert all(c[1] != WARN for c in r.commands)
    assert all(late for _fix, late in r.results[-1].accepted)


def test_two_runs_of_late_fixes_give_two_late_breaches():
    live = fixes_at([2000, 2000])
    run1 = fixes_at([-30] * 3, start=T0 - 7200, seq0=100)
    run2 = fixes_at([-30] * 3, start=T0 - 3600, seq0=200)
    r = run(
        [
            one_by_one(live),
            [tag_msg(run1)],
            tag_msg(fix(T0 + 60, at_distance(100, 2000), seq=2)),
            [tag_msg(run2)],
        ]
    )
    assert len(r.ids("zone.late_breach")) == 2
    assert {x.type for x in r.records} == {"zone.late_breach"}


# -- victim devices ----------------------------------------------------------------------------


def test_proximity_fresh_then_stale_then_fresh_again_then_resolved():
    msgs = [
        victim_msg(fix(T0, offset(FAR, 0, 300))),
        tag_msg(fix(T0 + 10, FAR, seq=1)),  # 300 m, victim fix 10 s old: proximity
        tag_msg(fix(T0 + 200, FAR, seq=2)),  # victim fix 200 s old: stale
        tag_msg(fix(T0 + 300, FAR, seq=3)),  # still stale: said once
        victim_msg(fix(T0 + 310, offset(FAR, 0, 200))),  # re-checked on the victim's report
        victim_msg(fix(T0 + 320, offset(FAR, 0, 900))),
        tag_msg(fix(T0 + 330, FAR, seq=4)),
    ]
    r = run(msgs)
    prox = r.of("proximity")
    assert [(p.state, p.severity, p.confidence, p.distance_m, p.ts[11:]) for p in prox] == [
        ("open", "critical", "confirmed", 300.0, "10:00:10Z"),
        ("updated", "critical", "stale", 300.0, "10:03:20Z"),
        ("updated", "critical", "confirmed", 200.0, "10:05:10Z"),
        ("resolved", "critical", "confirmed", 900.0, "10:05:30Z"),
    ]
    assert {(p.zone, p.victim, p.id) for p in prox} == {(None, VICTIM, prox[0].id)}


def test_a_stale_victim_position_raises_no_proximity():
    msgs = [victim_msg(fix(T0, offset(FAR, 0, 100))), tag_msg(fix(T0 + 181, FAR, seq=1))]
    assert run(msgs).records == []


def test_a_victim_report_near_a_recent_tag_position_raises_proximity():
    msgs = [tag_msg(fix(T0, FAR, seq=1)), victim_msg(fix(T0 + 60, offset(FAR, 90, 400)))]
    assert [(x.type, x.state, x.ts[11:]) for x in run(msgs).records] == [
        ("proximity", "open", "10:01:00Z")
    ]


def test_approach_to_a_victim_device_warns_then_goes_critical():
    msgs = []
    for i in range(25):
        if i % 6 == 0:
            msgs.append(victim_msg(fix(T0 + 10 * i, FAR)))
        msgs.append(tag_msg(fix(T0 + 10 * i + 1, offset(FAR, 90, 2500 - 100 * i), seq=i)))
    r = run(msgs)
    appr = r.of("approach")
    assert [(a.state, a.severity, a.zone, a.victim) for a in appr[:2]] == [
        ("open", "warning", None, VICTIM),
        ("updated", "critical", None, VICTIM),
    ]
    assert appr[0].closing_mps == pytest.approx(10, abs=0.1)
    assert appr[1].eta_s <= 120 and appr[1].distance_m == pytest.approx(1100, abs=1)
    assert r.of("proximity")[0].distance_m <= 500


# -- tag rules -----------------------------------------------------------------------------------


def test_tamper_once_until_the_strap_is_ok_again_and_battery_once_per_discharge():
    script = [
        ("ok", 50),
        ("tamper", 40),  # tamper
        ("tamper", 30),
        ("ok", 14),  # battery low; tamper re-armed
        ("tamper", 12),  # tamper again
        (None, 20),
        (None, 24),  # 24 < 15 + 10: not re-armed
        (None, 14),
        (None, 25),  # re-armed
        (None, 10),  # battery low again
    ]
    fixes = [
        fix(T0 + 30 * i, FAR, seq=i, bat=b, **({"strap": s} if s else {}))
        for i, (s, b) in enumerate(script)
    ]
    r = run(one_by_one(fixes))
    assert [(x.type, x.severity, x.state, x.ts[11:]) for x in r.records] == [
        ("tag.tamper", "critical", "open", "10:00:30Z"),
        ("tag.battery_low", "warning", "open", "10:01:30Z"),
        ("tag.tamper", "critical", "open", "10:02:00Z"),
        ("tag.battery_low", "warning", "open", "10:04:30Z"),
    ]
    assert len({x.id for x in r.records}) == 4


def test_jump_compares_with_the_last_plausible_fix_and_ignores_large_acc():
    fixes = [
        fix(T0, FAR, seq=0),
        fix(T0 + 30, offset(FAR, 0, 30), seq=1),
        fix(T0 + 60, offset(FAR, 0, 5000), seq=2),  # 4970 m in 30 s: jump
        fix(T0 + 90, offset(FAR, 0, 60), seq=3),  # 30 m in 60 s from the last plausible
        fix(T0 + 120, offset(FAR, 0, 5000), acc=60, seq=4),  # acc > 50: not judged
    ]
    r = run(one_by_one(fixes))
    assert [(x.type, x.severity, x.ts[11:]) for x in r.records] == [
        ("tag.jump", "warning", "10:01:00Z")
    ]


def test_jump_is_tested_against_zones_but_not_used_for_approach():
    standing = [fix(T0 + 10 * i, at_distance(100, 2500), seq=i) for i in range(4)]
    jumped = fix(T0 + 40, at_distance(100, 1000), seq=4)  # 1500 m in 10 s
    after = [fix(T0 + 50 + 10 * i, at_distance(100, 2500), seq=5 + i) for i in range(3)]
    r = run(one_by_one([*standing, jumped, *after]))
    assert [x.type for x in r.records] == ["tag.jump"]
    into = fix(T0 + 40, at_distance(100, -30), seq=4)  # a jump into the zone
    r = run(one_by_one([*standing, into, *after]))
    assert [(x.type, x.state, x.confidence) for x in r.records] == [
        ("tag.jump", "open", None),
        ("zone.breach", "open", "probable"),
        ("zone.breach", "resolved", "probable"),
    ]


# -- watchdogs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("where, severity", [(600, "critical"), (5000, "warning")])
def test_no_fix_after_no_fix_s_of_heartbeats(where, severity):
    fixes = [fix(T0, at_distance(100, where), seq=0)]
    fixes += [fix(T0 + 60 * i, None, seq=i) for i in range(1, 13)]
    fixes += [fix(T0 + 780, at_distance(100, where), seq=13)]
    r = run(one_by_one(fixes))
    assert [(x.type, x.state, x.severity, x.ts[11:]) for x in r.records] == [
        ("tag.no_fix", "open", severity, "10:10:00Z"),
        ("tag.no_fix", "resolved", severity, "10:13:00Z"),
    ]


@pytest.mark.parametrize("where, severity", [(600, "critical"), (5000, "warning")])
def test_no_comms_fires_at_its_deadline_driven_by_other_tags(where, severity):
    doc = case_doc([circle("home", warn_m=250, victim=VICTIM)], tags=("T-1", "T-2"))
    msgs = [tag_msg(fix(T0, at_distance(100, where), seq=0))]
    far = offset(CENTRE, 180, 9000)
    msgs += [tag_msg(fix(T0 + 60 * i, far, seq=i), tag="T-2") for i in range(1, 20)]
    msgs += [tag_msg(fix(T0 + 1200, at_distance(100, where), seq=1))]
    r = run(msgs, pipeline(doc))
    assert [(x.type, x.state, x.severity, x.tag, x.ts[11:]) for x in r.records] == [
        ("tag.no_comms", "open", severity, "T-1", "10:15:00Z"),
        ("tag.no_comms", "resolved", severity, "T-1", "10:20:00Z"),
    ]


def test_no_comms_is_not_fired_by_a_report_exactly_at_the_deadline():
    msgs = [tag_msg(fix(T0, FAR, seq=0)), tag_msg(fix(T0 + 900, FAR, seq=1))]
    assert run(msgs).records == []


def test_no_comms_by_tick_in_the_daemon():
    p = pipeline()
    run([tag_msg(fix(T0, FAR, seq=0))], p)
    assert p.tick(T0 + 900).records == []
    fired = p.tick(T0 + 901).records
    assert [(x.type, x.ts[11:]) for x in fired] == [("tag.no_comms", "10:15:00Z")]


# -- patterns ------------------------------------------------------------------------------------


def test_loitering_within_loiter_m_for_loiter_s():
    fixes = fixes_at([500] * 21, every=60)
    fixes += fixes_at([1100] * 3, every=60, start=T0 + 21 * 60, seq0=21)
    r = run(one_by_one(fixes))
    assert [(x.type, x.state, x.severity, x.zone, x.ts[11:]) for x in r.records] == [
        ("pattern.loitering", "open", "warning", "home", "10:15:00Z"),
        ("pattern.loitering", "resolved", "warning", "home", "10:21:00Z"),
    ]


def test_a_gap_longer_than_no_comms_s_breaks_loitering():
    fixes = fixes_at([500] * 10, every=60) + fixes_at(
        [500] * 10, every=60, start=T0 + 2000, seq0=10
    )
    r = run(one_by_one(fixes))
    assert [x.type for x in r.records] == ["tag.no_comms", "tag.no_comms"]


def visit(start: float, seq0: int) -> list[dict]:
    return fixes_at([200, 200, 200, 400, 400, 5000], start=start, seq0=seq0)


def test_repeated_approach_on_the_third_separate_visit():
    day = 86400
    fixes = visit(T0, 0) + visit(T0 + 1800, 10)  # 28 min apart: one visit
    fixes += visit(T0 + day, 20) + visit(T0 + 2 * day, 30)
    r = run(one_by_one(fixes))
    rep = r.of("pattern.repeated_approach")
    assert [(x.state, x.severity, x.case, x.tag, x.zone, x.ts) for x in rep] == [
        ("open", "warning", CASE, TAG, None, "2026-07-08T10:00:00Z")
    ]


def test_visits_more_than_7_days_apart_are_no_pattern():
    day = 86400
    fixes = visit(T0, 0) + visit(T0 + 4 * day, 10) + visit(T0 + 8 * day, 20)
    assert run(one_by_one(fixes)).of("pattern.repeated_approach") == []


# -- rejections the pipeline adds ----------------------------------------------------------


@pytest.mark.parametrize(
    "topic, reason, source",
    [
        ("tagwatch/v1/tags/T-UNKNOWN/fix", "unknown_tag", "T-UNKNOWN"),
        ("tagwatch/v1/victims/VD-UNKNOWN/fix", "unknown_device", "VD-UNKNOWN"),
        ("tagwatch/v1/tags/T-1/cmd", "unknown_topic", ""),
        ("other/v1/tags/T-1/fix", "unknown_topic", ""),
        ("tagwatch/v1/status", "unknown_topic", ""),
    ],
)
def test_pipeline_rejections_name_their_reason(topic, reason, source):
    payload = orjson.dumps(fix(T0, FAR, seq=1))
    result = pipeline().process([Inbound(topic, payload, T0)])
    assert [(r.source, r.rejection.reason) for r in result.rejected] == [(source, reason)]
    assert topic.split("/")[-2] in result.rejected[0].rejection.detail or reason == "unknown_topic"
    # Only a tag's payload is kept: a victim topic's (or an unrecognised topic's) may be a
    # victim's position.
    kept = payload.decode() if reason == "unknown_tag" else ""
    assert result.rejected[0].rejection.payload == kept
    assert result.records == [] and result.accepted == []


def test_a_tag_removed_by_a_reload_is_unknown_from_its_next_fix():
    # The pipeline remembers which topics belong to known tags; a reload forgets that.
    p = pipeline()
    first = p.process([tag_msg(fix(T0, FAR, seq=1))])
    assert len(first.accepted) == 1 and first.rejected == []
    p.reload(zoneset(case_doc([circle("home")], case_id="C-2", tags=["T-2"])))
    second = p.process([tag_msg(fix(T0 + 30, FAR, seq=2))])
    assert [r.rejection.reason for r in second.rejected] == ["unknown_tag"]
    assert second.accepted == []


# -- noise ---------------------------------------------------------------------------------


def test_noisy_walk_with_outliers_gives_no_false_and_no_missed_breach():
    from tests.noise_walk import count_false_and_missed

    c = count_false_and_missed(seed=20261128, legs=200)
    assert c.fixes >= 3000 and c.stays >= 50
    assert (c.false, c.missed) == (0, 0), (
        f"{c.false} confirmed breach(es) from outliers alone, {c.missed} of {c.stays} real "
        f"stays missed ({c.grazes_missed} shallow grazes also missed), over {c.fixes} fixes"
    )


# -- the alert object (DESIGN 3.3) -----------------------------------------------------------

DESIGN_KEYS = ["id", "type", "severity", "state", "case", "tag", "zone", "victim", "ts",
               "raised", "lat", "lon", "acc", "distance_m", "closing_mps", "eta_s",
               "confidence", "escalation", "detail"]


def test_every_record_has_the_design_keys_and_escalation_zero():
    """The engine never escalates: its records say level 0, never leave the key out."""
    r = run(one_by_one(fixes_at([300, 200, -20, -20, -20, 400, 400])))
    assert {"zone.warning", "zone.breach", "zone.exit"} <= {rec.type for rec in r.records}
    for rec in r.records:
        doc = orjson.loads(encode(rec))
        assert list(doc) == DESIGN_KEYS, rec.type
        assert doc["escalation"] == 0
