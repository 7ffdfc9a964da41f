"""Weekly schedules of zones: `Days HH:MM-HH:MM` windows in a case's timezone.

A window that crosses midnight (`Mon-Sun 19:00-07:00`) belongs to the day it
starts on, so `Fri 22:00-06:00` is active from Friday 22:00 to Saturday 06:00.
Local time comes from `zoneinfo`, so daylight saving shifts windows in UTC.

Evaluation is vectorised: the UTC offset is looked up once per distinct minute
of the batch (offsets only change on whole minutes since 2000), then weekday and
minute of day are plain numpy arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_INDEX = {name.lower(): i for i, name in enumerate(DAY_NAMES)}
_WINDOW = re.compile(
    r"^\s*(?P<days>[A-Za-z]{3}(?:\s*[-,]\s*[A-Za-z]{3})*)\s+"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)
# 1970-01-01 was a Thursday: weekday index 3 with Monday = 0.
_EPOCH_WEEKDAY = 3


class ScheduleError(ValueError):
    """A schedule window or timezone that cannot be understood."""


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # weekdays the window starts on, Monday = 0
    start_min: int  # minute of the day, inclusive
    end_min: int  # minute of the day, exclusive; <= start_min: ends the next day

    @property
    def crosses_midnight(self) -> bool:
        return self.end_min <= self.start_min


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...]
    timezone: str

    def active(self, ts: np.ndarray) -> np.ndarray:
        """Whether the schedule is active at each Unix time in `ts` (seconds)."""
        return self.active_at(*local_clock(ts, self.timezone))

    def active_at(self, weekday: np.ndarray, minute: np.ndarray) -> np.ndarray:
        """Whether it is active at local weekdays (Monday 0) and minutes of the day."""
        active = np.zeros(weekday.shape, dtype=bool)
        for window in self.windows:
            active |= _window_active(window, weekday, minute)
        return active


def local_clock(ts: np.ndarray, timezone: str) -> tuple[np.ndarray, np.ndarray]:
    """Local weekday (Monday 0) and minute of the day at each Unix time."""
    ts = np.asarray(ts, dtype=np.float64)
    local = ts + utc_offsets(ts, timezone)
    day_number = np.floor(local / 86400.0)
    weekday = ((day_number + _EPOCH_WEEKDAY) % 7).astype(np.int64)
    minute = ((local - day_number * 86400.0) // 60.0).astype(np.int64)
    return weekday, minute


def _window_active(window: Window, weekday: np.ndarray, minute: np.ndarray) -> np.ndarray:
    days = np.zeros(7, dtype=bool)
    days[list(window.days)] = True
    if not window.crosses_midnight:
        return days[weekday] & (minute >= window.start_min) & (minute < window.end_min)
    started_today = days[weekday] & (minute >= window.start_min)
    started_yesterday = days[(weekday - 1) % 7] & (minute < window.end_min)
    return started_today | started_yesterday


def utc_offsets(ts: np.ndarray, timezone: str) -> np.ndarray:
    """UTC offset in seconds of `timezone` at each Unix time.

    Offsets change at most a few times a year and never twice within an hour,
    so when the offset is the same at every hour of the batch's span it is
    the offset of the whole batch; otherwise one zoneinfo call per minute.
    """
    tz = load_timezone(timezone)
    ts = np.asarray(ts, dtype=np.float64)
    if ts.size == 0:
        return np.zeros(ts.shape)
    first, last = float(ts.min()), float(ts.max())
    hours = np.append(np.arange(first, last, 3600.0), last)
    if len(hours) <= 24 * 62:
        probes = {_offset_s(tz, h) for h in hours.tolist()}
        if len(probes) == 1:
            return np.full(ts.shape, probes.pop())
    minutes = np.floor(ts / 60.0)
    unique, inverse = np.unique(minutes, return_inverse=True)
    offsets = np.array([_offset_s(tz, m * 60.0) for m in unique.tolist()], dtype=np.float64)
    return offsets[inverse].reshape(np.shape(ts))


def _offset_s(tz: ZoneInfo, ts: float) -> float:
    offset = datetime.fromtimestamp(ts, UTC).astimezone(tz).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def load_timezone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"timezone must be an IANA name such as Europe/London, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown timezone {name!r} (expected an IANA name)") from exc


def parse_schedule(windows: object, timezone: str) -> Schedule:
    """Parse a list of window strings; raises ScheduleError naming the bad window.

    Equal schedules are one object: a caseload repeats the same school hours
    thousands of times."""
    load_timezone(timezone)
    if not isinstance(windows, list) or not windows:
        raise ScheduleError("schedule must be a non-empty list of 'Days HH:MM-HH:MM' strings")
    if all(isinstance(text, str) for text in windows):
        return _shared_schedule(tuple(windows), timezone)
    return _parse_windows(windows, timezone)


@lru_cache(maxsize=1024)
def _shared_schedule(windows: tuple[str, ...], timezone: str) -> Schedule:
    return _parse_windows(windows, timezone)


def _parse_windows(windows: tuple | list, timezone: str) -> Schedule:
    parsed = []
    for i, text in enumerate(windows):
        try:
            parsed.append(parse_window(text))
        except ScheduleError as exc:
            raise ScheduleError(f"window {i} ({text!r}): {exc}") from None
    return Schedule(tuple(parsed), timezone)


def parse_window(text: object) -> Window:
    if not isinstance(text, str):
        raise ScheduleError("a window must be a string like 'Mon-Fri 08:00-16:00'")
    match = _WINDOW.match(text)
    if not match:
        raise ScheduleError("expected 'Days HH:MM-HH:MM', e.g. 'Mon-Fri 08:00-16:00'")
    start = _parse_clock(match["start"], allow_24=False)
    end = _parse_clock(match["end"], allow_24=True)
    if start == end:
        raise ScheduleError("start and end are equal; use 00:00-24:00 for a whole day")
    # An end of 24:00 is minute 1440: the window runs to midnight without crossing it.
    return Window(_parse_days(match["days"]), start, end)


def _parse_clock(text: str, allow_24: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if allow_24 and hours == 24 and minutes == 0:
        return 24 * 60
    if hours > 23 or minutes > 59:
        raise ScheduleError(f"{text} is not a time of day")
    return hours * 60 + minutes


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in re.split(r"\s*,\s*", text.strip()):
        bounds = [_day(p) for p in re.split(r"\s*-\s*", part)]
        if len(bounds) == 1:
            days.add(bounds[0])
        elif len(bounds) == 2:
            first, last = bounds
            span = (last - first) % 7
            days.update((first + k) % 7 for k in range(span + 1))
        else:
            raise ScheduleError(f"{part!r} is not a day or a day range")
    return frozenset(days)


def _day(text: str) -> int:
    try:
        return _DAY_INDEX[text.lower()]
    except KeyError:
        raise ScheduleError(f"{text!r} is not a day (use {', '.join(DAY_NAMES)})") from None
