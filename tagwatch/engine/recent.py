"""A tag's bounded memories of its recent fixes, packed as bytes.

Per tag the engine remembers the last RECENT fixes' positions and seqs (to
recognise duplicates) and the positions of the last approach window (to seed
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
_POSITION = struct.Struct("<3d")  # ts, lat, lon
_SEQ = struct.Struct("<q")
_TRACK = struct.Struct("<4d")  # ts, lon, lat, acc
_TS = struct.Struct("<d")


def position(ts: float, lat: float | None, lon: float | None) -> bytes:
    return _POSITION.pack(ts, _NAN if lat is None else lat, _NAN if lon is None else lon)


def seq(value: int) -> bytes:
    return _SEQ.pack(value)


def holds(items: bytes, item: bytes) -> bool:
    """Whether `items`, a run of items of len(item) bytes each, holds `item`."""
    size = len(item)
    at = items.find(item)
    while at >= 0:
        if at % size == 0:
            return True
        at = items.find(item, at + 1)  # a match across two items is none
    return False


def keep_last(items: bytes, item: bytes, count: int) -> bytes:
    """`items` with `item` appended, of which only the last `count` are kept."""
    items += item
    excess = len(items) - count * len(item)
    return items[excess:] if excess > 0 else items


def track_add(track: bytes, ts: float, lon: float, lat: float, acc: float, oldest: float) -> bytes:
    """Append a position to a time-ordered track and drop the entries before `oldest`."""
    track += _TRACK.pack(ts, lon, lat, acc)
    size, start = _TRACK.size, 0
    while _TS.unpack_from(track, start)[0] < oldest:
        start += size
    return track[start:] if start else track


def track_columns(track: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The track as columns: ts, lon, lat, acc."""
    rows = np.frombuffer(track, dtype="<f8").reshape(-1, 4)
    return rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
