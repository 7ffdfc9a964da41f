"""A tag's bounded memories of its recent fixes, packed as bytes.

Per tag the engine remembers the last RECENT fixes' times, positions and
seqs (to recognise duplicates) and the positions of the last approach window (to seed
the approach window of a zone the tag comes within range of). As lists of
tuples of floats they cost about 4 KB a tag and dominate a 100,000-tag
caseload; packed as fixed-size binary items in one bytes object they cost a
fifth of that, and their checkpoints shrink alike.

Matching is exact: an item is compared byte for byte, at item boundaries only.
A missing position (a fix without lat/lon) is packed as NaN, which matches
itself byte for byte as None matched None.
"""

from __future__ import annotations

import struct

import numpy as np

_NAN = float("nan")
_NO_SEQ = -1  # seqs are >= 0
_FIX = struct.Struct("<3dq")  # ts, lat, lon, seq
_SEQ = struct.Struct("<q")
_SEQ_AT = struct.calcsize("<3d")  # a fix item's time and position come before its seq
_TRACK = struct.Struct("<4d")  # ts, lon, lat, acc
_TS = struct.Struct("<d")


def fix_item(ts: float, lat: float | None, lon: float | None, seq: int | None) -> bytes:
    """One fix as remembered for duplicate detection: its time, position and seq."""
    return _FIX.pack(
        ts,
        _NAN if lat is None else lat,
        _NAN if lon is None else lon,
        _NO_SEQ if seq is None else seq,
    )


def holds_position(items: bytes, item: bytes) -> bool:
    """Whether a fix item in `items` has the time and position of `item`."""
    return holds(items, item[:_SEQ_AT], _FIX.size, 0)


def holds_seq(items: bytes, seq: int) -> bool:
    """Whether a fix item in `items` has this seq."""
    return holds(items, _SEQ.pack(seq), _FIX.size, _SEQ_AT)


def holds(items: bytes, part: bytes, size: int, offset: int = 0) -> bool:
    """Whether `items`, a run of items of `size` bytes, has `part` at `offset` of one."""
    at = items.find(part)
    while at >= 0:
        if at % size == offset:
            return True
        at = items.find(part, at + 1)  # a match elsewhere in an item is none
    return False


def keep_last(items: bytes, item: bytes, count: int) -> bytes:
    """`items` with `item` appended, of which only the last `count` are kept."""
    excess = len(items) + len(item) - count * len(item)
    return items[excess:] + item if excess > 0 else items + item  # one copy, not two


def track_add(track: bytes, ts: float, lon: float, lat: float, acc: float, oldest: float) -> bytes:
    """Append a position to a time-ordered track and drop the entries before `oldest`
    (never the new one: `oldest` is at most `ts`)."""
    size, start, end = _TRACK.size, 0, len(track)
    while start < end and _TS.unpack_from(track, start)[0] < oldest:
        start += size
    return (track[start:] if start else track) + _TRACK.pack(ts, lon, lat, acc)


def track_columns(track: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The track as columns: ts, lon, lat, acc."""
    rows = np.frombuffer(track, dtype="<f8").reshape(-1, 4)
    return rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
