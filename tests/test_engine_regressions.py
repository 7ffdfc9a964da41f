"""Behaviours fixed after the simulator met the engine: each was a false alert."""

import numpy as np

from .tracks import (
    at_distance,
    fix,
    offset,
    one_by_one,
    pipeline,
    run,
    tag_msg,
    utc,
    victim_msg,
    without_protection,
)

T0 = utc("2026-07-06T10:00:00Z")  # a Monday


def test_two_fixes_at_the_same_second_within_their_accuracy_are_no_jump():
    first = fix(T0, at_distance(100, 2000), acc=8, seq=1)
    second = fix(T0, offset(at_distance(100, 2000), 0, 11), acc=8, seq=2)
    r = run([tag_msg(first), tag_msg(second)])
    assert r.ids("tag.jump") == set()


def test_a_real_jump_is_still_a_jump():
    first = fix(T0, at_distance(100, 2000), acc=8, seq=1)
    second = fix(T0 + 10, offset(at_distance(100, 2000), 0, 5000), acc=8, seq=2)
    r = run([tag_msg(first), tag_msg(second)])
    assert len(r.ids("tag.jump")) == 1


def test_overconfident_outliers_near_a_parked_tag_raise_no_approach():
    rng = np.random.default_rng(7)
    fixes = []
    for i in range(240):  # 20 minutes at the fast 5 s rate, parked 60 m outside home
        pos = offset(at_distance(100, 60), rng.uniform(0, 360), abs(rng.normal(0, 5)))
        if rng.random() < 0.2:
            pos = offset(pos, rng.uniform(0, 360), rng.uniform(50, 200))
        fixes.append(fix(T0 + 5 * i, pos, acc=float(rng.uniform(5, 10)), seq=i))
    r = run(one_by_one(fixes))
    assert r.ids("approach") == set(), r.summary("approach")


def test_no_comms_never_resolves_before_it_opened():
    pipe = pipeline()
    pipe.process([tag_msg(fix(T0, at_distance(100, 2000), seq=1))])
    # The victim's phone moves the event clock past the tag's no_comms deadline (900 s).
    opened = without_protection(
        pipe.process([victim_msg(fix(T0 + 1000, at_distance(100, 5000)))]).records
    )
    assert [(x.type, x.state) for x in opened] == [("tag.no_comms", "open")]
    # Then the tag's buffered upload arrives, starting a minute after its last fix.
    buffered = [fix(T0 + 60 * k, at_distance(100, 2000), seq=1 + k) for k in range(1, 30)]
    resolved = [x for x in pipe.process([tag_msg(buffered)]).records if x.type == "tag.no_comms"]
    assert [x.state for x in resolved] == ["resolved"]
    assert resolved[0].id == opened[0].id and resolved[0].ts >= opened[0].ts


def test_a_zone_far_from_its_tag_gets_no_rule_context():
    # Each zone's rule context costs memory (0.6 KB a tag with three zones, in a
    # 100,000-tag caseload): it is made only when a rule has something to look at.
    pipe = pipeline()
    pipe.process([tag_msg(fix(T0, at_distance(100, 20_000), seq=1))])  # first fix: full rules
    assert dict(pipe.engine.zone_info) == {}
    pipe.process([tag_msg(fix(T0 + 30, at_distance(100, 500), seq=2))])  # within the horizon
    assert [info.key for info in pipe.engine.zone_info.values()] == ["C-1/home"]
