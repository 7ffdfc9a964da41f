"""Zone schedules: `Days HH:MM-HH:MM` windows in a case's timezone (DESIGN 3.4).

Table tests give instants in UTC, worked out by hand from the published
daylight-saving changes, so a wrong offset cannot hide behind the same library.
A hypothesis test compares `Schedule.active` with a scalar reference written
here with datetime + zoneinfo: one timestamp at a time, a window as the
interval of naive local datetimes it covers.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zones import Schedule, ScheduleError, parse_schedule

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def active_at(windows: list[str], timezone: str, *instants: str) -> list[bool]:
    schedule = parse_schedule(windows, timezone)
    return schedule.active(np.array([utc(t) for t in instants])).tolist()


# --- tables ------------------------------------------------------------------------------------

# (windows, timezone, UTC instant, expected). January in London is GMT = UTC;
# 2026-01-05 and 2026-01-12 are Mondays, 2026-01-09 a Friday, 2026-01-10 a Saturday.
TABLE = [
    # school hours: weekdays only, start inclusive, end exclusive
    (["Mon-Fri 08:00-16:00"], "Europe/London", "2026-01-10T10:00", False),
    (["Mon-Fri 08:00-16:00"], "Europe/London", "2026-01-12T07:59", False),
    (["Mon-Fri 08:00-16:00"], "Europe/London", "2026-01-12T08:00", True),
    (["Mon-Fri 08:00-16:00"], "Europe/London", "2026-01-12T15:59:59", True),
    (["Mon-Fri 08:00-16:00"], "Europe/London", "2026-01-12T16:00", False),
    (["Mon-Fri 08:00-16:00"], "Europe/London", "2026-01-09T12:00", True),
    # across midnight: a window belongs to the day it starts on
    (["Fri 22:00-06:00"], "Europe/London", "2026-01-09T21:59", False),
    (["Fri 22:00-06:00"], "Europe/London", "2026-01-09T23:00", True),
    (["Fri 22:00-06:00"], "Europe/London", "2026-01-10T03:00", True),
    (["Fri 22:00-06:00"], "Europe/London", "2026-01-10T06:00", False),
    (["Fri 22:00-06:00"], "Europe/London", "2026-01-09T03:00", False),
    (["Thu-Fri 22:00-06:00"], "Europe/London", "2026-01-09T03:00", True),
    (["Thu,Fri 22:00-06:00"], "Europe/London", "2026-01-09T03:00", True),
    (["Sun 22:00-02:00"], "Europe/London", "2026-01-12T01:00", True),  # Sunday's, past Monday 0h
    (["Sun 22:00-02:00"], "Europe/London", "2026-01-05T22:30", False),
    # day ranges wrap the week; lists mix; a day may be written in any case
    (["Fri-Mon 12:00-13:00"], "Europe/London", "2026-01-11T12:30", True),
    (["Fri-Mon 12:00-13:00"], "Europe/London", "2026-01-13T12:30", False),
    (["Mon, Wed 12:00-13:00"], "Europe/London", "2026-01-14T12:30", True),
    (["mon,WED 12:00-13:00"], "Europe/London", "2026-01-13T12:30", False),
    # whole days, and an end of 24:00 or 00:00 reaches midnight exactly
    (["Sat 00:00-24:00"], "Europe/London", "2026-01-10T23:59:59", True),
    (["Sat 00:00-24:00"], "Europe/London", "2026-01-11T00:00", False),
    (["Sat 20:00-00:00"], "Europe/London", "2026-01-10T23:59", True),
    (["Sat 20:00-00:00"], "Europe/London", "2026-01-11T00:00", False),
    # several windows: any one active is enough
    (["Mon 08:00-09:00", "Sat 10:00-11:00"], "Europe/London", "2026-01-10T10:30", True),
    (["Mon 08:00-09:00", "Sat 10:00-11:00"], "Europe/London", "2026-01-10T09:30", False),
    # a curfew in July: 19:30 BST is 18:30 UTC
    (["Mon-Sun 19:00-07:00"], "Europe/London", "2026-07-15T18:30", True),
    (["Mon-Sun 19:00-07:00"], "Europe/London", "2026-07-15T17:59", False),
    (["Mon-Sun 19:00-07:00"], "Europe/London", "2026-07-15T18:00", True),
    (["Mon-Sun 19:00-07:00"], "Europe/London", "2026-07-16T05:59", True),
    (["Mon-Sun 19:00-07:00"], "Europe/London", "2026-07-16T06:00", False),
]


@pytest.mark.parametrize(("windows", "timezone", "instant", "expected"), TABLE)
def test_table(windows: list[str], timezone: str, instant: str, expected: bool) -> None:
    assert active_at(windows, timezone, instant) == [expected]


# London, spring forward on Sunday 2026-03-29 at 01:00 UTC (01:00 GMT -> 02:00 BST):
# `Sun 00:30-03:00` runs 00:30..02:00 UTC (90 min); `Sun 08:00-09:00` is 07:00..08:00 UTC.
# London, fall back on Sunday 2026-10-25 at 01:00 UTC (02:00 BST -> 01:00 GMT):
# `Sun 00:30-03:00` runs Sat 23:30..Sun 03:00 UTC (3.5 h); `Sun 08:00-09:00` is 08:00..09:00 UTC.
DST_LONDON = [
    ("Sun 00:30-03:00", "2026-03-29T00:29", False),
    ("Sun 00:30-03:00", "2026-03-29T00:30", True),
    ("Sun 00:30-03:00", "2026-03-29T00:59", True),
    ("Sun 00:30-03:00", "2026-03-29T01:00", True),
    ("Sun 00:30-03:00", "2026-03-29T01:59", True),
    ("Sun 00:30-03:00", "2026-03-29T02:00", False),
    ("Sun 08:00-09:00", "2026-03-29T06:59", False),
    ("Sun 08:00-09:00", "2026-03-29T07:00", True),
    ("Sun 08:00-09:00", "2026-03-29T07:59", True),
    ("Sun 08:00-09:00", "2026-03-29T08:00", False),
    ("Sun 00:30-03:00", "2026-10-24T23:29", False),
    ("Sun 00:30-03:00", "2026-10-24T23:30", True),
    ("Sun 00:30-03:00", "2026-10-25T00:30", True),
    ("Sun 00:30-03:00", "2026-10-25T01:30", True),
    ("Sun 00:30-03:00", "2026-10-25T02:59", True),
    ("Sun 00:30-03:00", "2026-10-25T03:00", False),
    ("Sun 08:00-09:00", "2026-10-25T07:59", False),
    ("Sun 08:00-09:00", "2026-10-25T08:00", True),
    ("Sun 08:00-09:00", "2026-10-25T08:59", True),
    ("Sun 08:00-09:00", "2026-10-25T09:00", False),
]


@pytest.mark.parametrize(("window", "instant", "expected"), DST_LONDON)
def test_london_daylight_saving_changes(window: str, instant: str, expected: bool) -> None:
    assert active_at([window], "Europe/London", instant) == [expected]


def test_new_york_spring_forward() -> None:
    # 2026-03-08 at 07:00 UTC: 02:00 EST -> 03:00 EDT. `Sun 01:30-03:30` is 06:30..07:30 UTC.
    got = active_at(
        ["Sun 01:30-03:30"],
        "America/New_York",
        "2026-03-08T06:29",
        "2026-03-08T06:30",
        "2026-03-08T07:00",
        "2026-03-08T07:29",
        "2026-03-08T07:30",
    )
    assert got == [False, True, True, True, False]


def test_sydney_southern_summer_and_winter() -> None:
    # Monday 08:00 in Sydney is Sunday 21:00 UTC in January (AEDT, +11)
    # and Sunday 22:00 UTC in July (AEST, +10): the local weekday rules, not UTC's.
    got = active_at(
        ["Mon-Fri 08:00-16:00"],
        "Australia/Sydney",
        "2026-01-04T20:59",
        "2026-01-04T21:00",
        "2026-07-05T21:30",
        "2026-07-05T22:00",
    )
    assert got == [False, True, False, True]


def test_sydney_fall_back_repeats_the_hour() -> None:
    # 2026-04-04 at 16:00 UTC: 03:00 AEDT -> 02:00 AEST, so local 02:00-03:00 lasts two hours.
    got = active_at(
        ["Sun 02:00-03:00"],
        "Australia/Sydney",
        "2026-04-04T14:59",
        "2026-04-04T15:00",
        "2026-04-04T16:30",
        "2026-04-04T16:59",
        "2026-04-04T17:00",
    )
    assert got == [False, True, True, True, False]


def test_active_keeps_the_shape_and_accepts_integers() -> None:
    schedule = parse_schedule(["Mon-Fri 08:00-16:00"], "Europe/London")
    ts = np.array([[utc("2026-01-12T09:00"), utc("2026-01-10T09:00")]] * 2, dtype=np.int64)
    assert schedule.active(ts).tolist() == [[True, False], [True, False]]
    assert schedule.active(np.zeros(0)).shape == (0,)


@pytest.mark.parametrize(
    "windows",
    [
        ["Mon-Fri 8-16"],
        ["Funday 08:00-09:00"],
        ["Mon 25:00-26:00"],
        ["Mon 08:00-08:00"],
        ["Mon 08:60-09:00"],
        ["Mon 24:00-02:00"],
        ["Mon-Tue-Wed 08:00-09:00"],
        ["08:00-09:00"],
        ["Mon 08:00-09:00", "nonsense"],
        [42],
        [],
        "Mon 08:00-09:00",
        None,
        {"Mon": "08:00-09:00"},
    ],
    ids=repr,
)
def test_bad_windows_rejected(windows: object) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(windows, "Europe/London")


def test_error_names_the_bad_window() -> None:
    with pytest.raises(ScheduleError) as err:
        parse_schedule(["Mon 08:00-09:00", "Funday 08:00-09:00"], "Europe/London")
    assert "window 1" in str(err.value) and "Funday 08:00-09:00" in str(err.value)


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "", "GMT+25", None, "../etc/passwd"])
def test_bad_timezone_rejected(timezone: object) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(["Mon 08:00-09:00"], timezone)  # type: ignore[arg-type]


# --- the scalar reference ----------------------------------------------------------------------

TIMEZONES = (
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",  # +05:30
    "America/St_Johns",  # -03:30 with daylight saving
    "Australia/Lord_Howe",  # daylight saving of 30 minutes
    "Pacific/Chatham",  # +12:45
    "Pacific/Kiritimati",  # +14
)


def reference_active(windows: list[tuple[set[int], int, int]], timezone: str, ts: float) -> bool:
    # Whole seconds: which minute a fix falls in depends only on floor(ts), and this keeps
    # datetime's microsecond rounding from moving a fix across a minute.
    local = datetime.fromtimestamp(math.floor(ts), UTC).astimezone(ZoneInfo(timezone))
    wall = local.replace(tzinfo=None)
    for days, start, end in windows:
        for back in (0, 1):
            day = wall.date() - timedelta(days=back)
            if day.weekday() not in days:
                continue
            midnight = datetime.combine(day, time())
            begin = midnight + timedelta(minutes=start)
            finish = midnight + timedelta(minutes=end if end > start else end + 1440)
            if begin <= wall < finish:
                return True
    return False


@cache
def transitions(timezone: str) -> tuple[float, ...]:
    """UTC instants of the offset changes of `timezone` in 2025-2027 (whole minutes)."""
    tz = ZoneInfo(timezone)

    def offset(minute: int) -> timedelta | None:
        return datetime.fromtimestamp(minute * 60, UTC).astimezone(tz).utcoffset()

    start = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp()) // 60
    stop = int(datetime(2028, 1, 1, tzinfo=UTC).timestamp()) // 60
    found = []
    for lo in range(start, stop, 360):
        hi = lo + 360
        if offset(lo) == offset(hi):
            continue
        while hi - lo > 1:  # the first minute with the new offset
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
        found.append(hi * 60.0)
    return tuple(found)


def clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@st.composite
def day_part(draw: st.DrawFn) -> tuple[str, set[int]]:
    first = draw(st.integers(0, 6))
    name = draw(st.sampled_from([str.title, str.lower, str.upper]))
    if draw(st.booleans()):
        return name(DAYS[first]), {first}
    last = draw(st.integers(0, 6))
    days = {(first + k) % 7 for k in range((last - first) % 7 + 1)}
    return f"{name(DAYS[first])}-{name(DAYS[last])}", days


@st.composite
def window(draw: st.DrawFn) -> tuple[str, tuple[set[int], int, int]]:
    parts = draw(st.lists(day_part(), min_size=1, max_size=3))
    start = draw(st.integers(0, 1439))
    end = draw(st.integers(0, 1439))
    end += end >= start  # any minute of 0..1440 but the start
    days = set().union(*(d for _, d in parts))
    text = f"{','.join(p for p, _ in parts)} {clock(start)}-{clock(end)}"
    return text, (days, start, end)


@st.composite
def timestamps(draw: st.DrawFn, timezone: str) -> list[float]:
    plain = st.floats(946_684_800.0, 2_208_988_800.0)  # 2000 .. 2040
    edges = transitions(timezone)
    if edges:
        near = st.tuples(st.sampled_from(edges), st.integers(-180, 180), st.floats(0.0, 59.999))
        plain = st.one_of(plain, near.map(lambda t: t[0] + 60 * t[1] + t[2]))
    return draw(st.lists(plain, min_size=1, max_size=40))


@st.composite
def cases(draw: st.DrawFn):
    timezone = draw(st.sampled_from(TIMEZONES))
    windows = draw(st.lists(window(), min_size=1, max_size=3))
    return timezone, windows, draw(timestamps(timezone))


@settings(max_examples=300, deadline=None)
@given(case=cases())
def test_active_equals_scalar_reference(case) -> None:
    timezone, windows, ts = case
    schedule: Schedule = parse_schedule([text for text, _ in windows], timezone)
    got = schedule.active(np.array(ts)).tolist()
    want = [reference_active([spec for _, spec in windows], timezone, t) for t in ts]
    for t, g, w in zip(ts, got, want, strict=True):
        local = datetime.fromtimestamp(math.floor(t), UTC).astimezone(ZoneInfo(timezone))
        assert g == w, f"{[text for text, _ in windows]} at {local.isoformat()} ({t}): {g}"


def test_reference_agrees_with_the_table() -> None:
    # The reference is only worth something if it gets the hand-worked cases right too.
    for windows, timezone, instant, expected in TABLE:
        specs = []
        for text in windows:
            days_text, clocks = text.rsplit(" ", 1)
            start, end = (int(c[:2]) * 60 + int(c[3:]) for c in clocks.split("-"))
            specs.append((_days(days_text), start, end))
        assert reference_active(specs, timezone, utc(instant)) == expected, (windows, instant)


def _days(text: str) -> set[int]:
    index = {d.lower(): i for i, d in enumerate(DAYS)}
    days: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        a, b = index[first.lower()], index[(last or first).lower()]
        days |= {(a + k) % 7 for k in range((b - a) % 7 + 1)}
    return days


def test_transitions_found() -> None:
    assert datetime.fromtimestamp(transitions("Europe/London")[2], UTC) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )
    assert date(2026, 3, 29).weekday() == 6
