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
