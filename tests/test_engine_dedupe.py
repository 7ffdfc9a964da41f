"""Duplicate detection by seq: long re-uploads are caught, a rebooted counter is not silenced."""

from hypothesis import given
from hypothesis import strategies as st

from tagwatch.engine import seqs

from .tracks import at_distance, fix, run, tag_msg, utc

T0 = utc("2026-07-06T10:00:00Z")


def test_a_rebooted_device_counting_from_zero_again_is_not_dropped():
    before = [fix(T0 + 10 * i, at_distance(100, 2000), seq=i) for i in range(40)]
    after = [fix(T0 + 1000 + 10 * i, at_distance(100, 2000), seq=i) for i in range(40)]
    r = run([[tag_msg(f) for f in before], [tag_msg(f) for f in after]])
    assert r.results[1].duplicates == 0
    assert len(r.results[1].accepted) == 40


def test_a_reupload_far_older_than_the_recent_window_is_recognised():
    buffered = [fix(T0 + 10 * i, at_distance(100, -30), seq=i) for i in range(200)]
    live = fix(T0 + 5000, at_distance(100, 3000), seq=200)
    again = [*buffered, fix(T0 + 5010, at_distance(100, 3000), seq=201)]  # one fix more
    r = run([tag_msg(buffered), tag_msg(live), tag_msg(again)])
    assert r.results[2].duplicates == 200
    assert len(r.results[2].accepted) == 1
    assert r.ids("zone.late_breach") == set()


@given(st.lists(st.integers(min_value=0, max_value=500), max_size=300))
def test_seq_ranges_remember_exactly_what_was_added(values):
    ranges: list[list[int]] = []
    for v in values:
        seqs.add(ranges, v)
    assert all(ranges[i][1] + 1 < ranges[i + 1][0] for i in range(len(ranges) - 1))
    kept = set(values) if len(ranges) < seqs.MAX_RANGES else None
    for probe in range(0, 502):
        if kept is not None:
            assert seqs.seen(ranges, probe) == (probe in kept)


def test_a_fix_dated_ahead_of_the_receiving_clock_does_not_make_the_next_ones_late():
    """Issue 16.11, exactly: one fix dated 100 s ahead (within max_future_s 120) is
    accepted; the correct fixes after it are still live, so the real breach they show is a
    live breach (probable, then confirmed), not a late-breach warning."""
    far, inside = at_distance(100, 2000), at_distance(100, -30)
    messages = [
        tag_msg(fix(T0, far, seq=1), received=T0 + 1),
        tag_msg(fix(T0 + 110, far, seq=2), received=T0 + 10),  # 100 s ahead
        tag_msg(fix(T0 + 20, inside, seq=3), received=T0 + 21),
        tag_msg(fix(T0 + 30, inside, seq=4), received=T0 + 31),
        tag_msg(fix(T0 + 40, inside, seq=5), received=T0 + 41),
    ]
    for batches in ([m] for m in messages), [messages]:  # one by one, or one batch
        r = run(list(batches))
        assert [late for res in r.results for _, late in res.accepted] == [False] * 5
        assert r.ids("zone.late_breach") == set()
        assert [(t, s, c) for t, s, _, c in r.summary("zone.breach")] == [
            ("zone.breach", "open", "probable"), ("zone.breach", "updated", "confirmed")]
        assert not r.of("tag.jump")  # nor is the way back from the future fix a jump


def test_lateness_is_still_judged_against_the_fixes_that_were_not_in_the_future():
    far, inside = at_distance(100, 2000), at_distance(100, -30)
    r = run([
        tag_msg(fix(T0 + 50, far, seq=1), received=T0 + 51),
        tag_msg(fix(T0 + 150, far, seq=2), received=T0 + 60),  # ahead: no watermark
        tag_msg(fix(T0 + 20, inside, seq=3), received=T0 + 61),  # older than T0 + 50: late
    ])
    assert [late for res in r.results for _, late in res.accepted] == [False, False, True]
    assert r.ids("zone.late_breach")
