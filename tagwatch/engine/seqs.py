"""The seq values a tag has used, kept as a short sorted list of [lo, hi] ranges.

Counters mostly run on by one, so a tag's whole history of seqs fits in a
range or two: duplicates are recognised however large a re-uploaded buffer
is, at the cost of a few integers per tag. The oldest ranges are dropped
beyond MAX_RANGES (a device whose counter jumps about often).
"""

from __future__ import annotations

from bisect import bisect_right

MAX_RANGES = 32


def seen(ranges: list[list[int]], seq: int) -> bool:
    i = bisect_right(ranges, [seq, float("inf")]) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


def add(ranges: list[list[int]], seq: int) -> None:
    if ranges and ranges[-1][1] + 1 == seq:
        ranges[-1][1] = seq  # the common case: the counter ran on by one
        return
    if seen(ranges, seq):
        return
    i = bisect_right(ranges, [seq, float("inf")])
    ranges.insert(i, [seq, seq])
    _merge(ranges, i)
    if len(ranges) > MAX_RANGES:
        del ranges[0]


def _merge(ranges: list[list[int]], i: int) -> None:
    if i + 1 < len(ranges) and ranges[i][1] + 1 == ranges[i + 1][0]:
        ranges[i][1] = ranges[i + 1][1]
        del ranges[i + 1]
    if i > 0 and ranges[i - 1][1] + 1 == ranges[i][0]:
        ranges[i - 1][1] = ranges[i][1]
        del ranges[i]
