"""pattern.following (DESIGN 3.3, 3.6; engine/following.py) on scripted tracks.

The victim walks east at 2 m/s from FAR (nothing else near) and reports every
30 s; the tag reports every 30 s, 10 s after the victim. Distances here are
what the tag is from the victim's device at the same time.
"""

from __future__ import annotations

import pytest

from tagwatch.config import Rules
from tagwatch.engine.alerts import encode
from tagwatch.engine.state import DeviceState, load_device, load_tag
from tests.tracks import (
    CENTRE,
    VICTIM,
    fix,
    offset,
    pipeline,
    run,
    tag_msg,
    utc,
    victim_msg,
)

T0 = utc("2026-07-06T10:00:00Z")
FAR = offset(CENTRE, 0, 8000)  # 8 km north of home: nothing there
SPEED = 2.0


def victim_at(t: float) -> tuple[float, float]:
    return offset(FAR, 90, SPEED * t)


def follower(t: float) -> tuple[float, float]:
    """900 m behind the victim on the same route (where the victim was 450 s ago)."""
    return offset(FAR, 90, SPEED * t - 900)


def messages(
    tag_pos, n: int = 50, acc: float = 10.0, device_acc: float = 10.0, device_until: float = 1e9
) -> list:
    msgs = []
    for i in range(n):
        t = 30.0 * i
        if t < device_until:
            msgs.append(victim_msg(fix(T0 + t, victim_at(t), device_acc)))
        pos = tag_pos(t + 10)
        if pos is not None:
            msgs.append(tag_msg(fix(T0 + t + 10, pos, acc, seq=i)))
    return msgs


def following(records):
    return [r for r in records if r.type == "pattern.following"]


def test_a_follower_at_900_m_for_15_minutes_raises_it_once():
    r = run(messages(follower))
    got = following(r.records)
    assert [(a.state, a.severity, a.zone, a.victim) for a in got] == [
        ("open", "warning", None, VICTIM)
    ]
    # the run starts at the tag's first fix (10:00:10); 900 s later it covers the window
    assert got[0].ts[11:] == "10:15:10Z"
    # the device last reported 10 s before (20 m further on): 880 m from that position
    assert got[0].distance_m == pytest.approx(880, abs=5)
    assert r.of("proximity") == []


def test_the_episode_resolves_once_following_has_not_held_for_a_window():
    def then_turns_away(t: float):
        if t < 1500:
            return follower(t)
        return offset(follower(1500), 0, 3.0 * (t - 1500))  # north, away from the route

    r = run(messages(then_turns_away, n=110))
    got = following(r.records)
    assert [a.state for a in got] == ["open", "resolved"]
    assert got[0].id == got[1].id
    # held last at 10:28:40 (1494 m; 1588 m at the next fix); resolved 900 s on
    assert got[1].ts[11:] == "10:43:40Z"


@pytest.mark.parametrize(
    "tag_pos",
    [
        pytest.param(lambda t: offset(offset(FAR, 90, 1500), 0, 700), id="stationary-beside-route"),
        pytest.param(
            lambda t: offset(offset(FAR, 90, 3000 - SPEED * t), 0, 700), id="passing-the-other-way"
        ),
        pytest.param(lambda t: offset(victim_at(t), 0, 2000), id="abreast-2-km-away"),
    ],
)
def test_no_following(tag_pos):
    assert following(run(messages(tag_pos)).records) == []


def test_inside_mobile_radius_it_is_proximity_not_following():
    r = run(messages(lambda t: offset(victim_at(t), 0, 300)))
    assert following(r.records) == []
    assert [a.state for a in r.of("proximity")] == ["open"]


def test_a_device_lying_still_does_not_travel_by_its_jitter():
    """Net displacement, not path length: 40 fixes of +-60 m jitter are a 2.4 km
    path but no travel."""
    msgs = []
    for i in range(50):
        t = 30.0 * i
        jitter = offset(FAR, 90 if i % 2 else 270, 30)
        msgs.append(victim_msg(fix(T0 + t, jitter, 10.0)))
        msgs.append(tag_msg(fix(T0 + t + 10, offset(FAR, 90 + 90 * (i % 2), 800), seq=i)))
    assert following(run(msgs).records) == []


def test_coarse_fixes_count_with_their_accuracy():
    """The tag 1.6 km behind with lbs-grade fixes of 300 m: within follow_m once
    both accuracies are allowed for; with good fixes at 1.6 km, no following."""

    def behind(t):
        return offset(FAR, 90, SPEED * t - 1600)

    assert len(following(run(messages(behind, acc=300.0)).records)) == 1
    assert following(run(messages(behind)).records) == []


def test_a_stale_device_raises_no_following():
    """The phone reports for 12 minutes, then falls silent while the tag goes on
    along the route: its last position goes stale, and no following is raised."""
    r = run(messages(follower, device_until=720))
    assert following(r.records) == []
    assert len(following(run(messages(follower)).records)) == 1


@pytest.mark.parametrize("size", [7, 1000])
def test_one_by_one_equals_batches(size):
    msgs = messages(follower, n=60)
    single = [encode(r) for r in run(msgs).records]
    batched = [
        encode(r) for r in run([msgs[i : i + size] for i in range(0, len(msgs), size)]).records
    ]
    assert any(b'"pattern.following"' in e for e in single)
    assert single == batched


def test_checkpoint_and_restore_mid_episode_gives_no_second_alert():
    msgs = messages(follower, n=60)
    first = pipeline()
    before = run(msgs[:70], first)  # the episode opened at 10:15:10 (message 62)
    assert [a.state for a in following(before.records)] == ["open"]
    saved = first.checkpoints()
    second = pipeline()
    second.restore(saved)
    after = run(msgs[70:], second)
    assert following(after.records) == []
    whole = run(msgs)
    assert [encode(r) for r in before.records + after.records] == [encode(r) for r in whole.records]


def test_old_checkpoints_restore():
    """A device and a tag checkpoint from before following existed load, empty."""
    import msgspec

    old_device = msgspec.msgpack.encode(
        {"ts": T0, "lon": 0.0, "lat": 51.0, "xyz": [1.0, 2.0, 3.0], "acc": 15.0, "coarse": False}
    )
    assert load_device(old_device) == DeviceState(T0, 0.0, 51.0, (1.0, 2.0, 3.0), 15.0, False)
    old_tag = msgspec.msgpack.encode({"victims": {"C-1/V-1": {"clear_run": 1, "window": []}}})
    track = load_tag(old_tag).victims["C-1/V-1"]
    assert (track.follow, track.follow_held, track.follow_run) == (None, None, [])


def test_rules_have_the_design_defaults():
    r = Rules()
    assert (r.follow_window_s, r.follow_m, r.follow_min_travel_m) == (900, 1500, 1000)
