"""The packed per-tag memories (engine/recent.py) and checkpoints from before them."""

from __future__ import annotations

import struct

import msgspec
import numpy as np

from tagwatch.engine import recent
from tagwatch.engine.state import load_tag


def test_a_seq_or_position_is_found_only_where_it_sits_in_an_item() -> None:
    items = recent.fix_item(1000.0, 51.5, -0.1, 7) + recent.fix_item(1030.0, 51.6, -0.2, 8)
    assert recent.holds_seq(items, 7) and recent.holds_seq(items, 8)
    assert not recent.holds_seq(items, 9)
    assert recent.holds_position(items, recent.fix_item(1030.0, 51.6, -0.2, 99))
    assert not recent.holds_position(items, recent.fix_item(1030.0, 51.6, -0.3, 8))
    # The bytes of a time are no seq: 1000.0 packed as a double, read as a seq.
    seq_lookalike = struct.unpack("<q", struct.pack("<d", 1000.0))[0]
    assert not recent.holds_seq(items, seq_lookalike)
    # Nor do 8 bytes straddling two items count.
    digests = b"AAAAAAAA" + b"BBBBBBBB"
    assert recent.holds(digests, b"AAAAAAAA", 8)
    assert digests.find(b"AAAABBBB") == 4 and not recent.holds(digests, b"AAAABBBB", 8)


def test_positions_without_lat_lon_match_each_other_and_nothing_else() -> None:
    items = recent.fix_item(100.0, None, None, None)
    assert recent.holds_position(items, recent.fix_item(100.0, None, None, 3))
    assert not recent.holds_position(items, recent.fix_item(100.0, 0.0, 0.0, None))
    assert not recent.holds_position(items, recent.fix_item(101.0, None, None, None))


def test_keep_last_keeps_the_newest_count_items() -> None:
    items = b""
    for s in range(20):
        items = recent.keep_last(items, recent.fix_item(1000.0 + s, 51.5, -0.1, s), 16)
    assert len(items) == 16 * 32
    assert not recent.holds_seq(items, 3)
    assert all(recent.holds_seq(items, s) for s in range(4, 20))


def test_the_track_keeps_the_window_and_reads_back_as_columns() -> None:
    track = b""
    for k in range(10):
        ts = 1000.0 + 30 * k
        track = recent.track_add(track, ts, -0.1 - k, 51.5 + k, 8.0 + k, oldest=ts - 90)
    ts, lon, lat, acc = recent.track_columns(track)
    assert ts.tolist() == [1180.0, 1210.0, 1240.0, 1270.0]  # the last 90 s, both ends in
    assert np.allclose(lon, [-6.1, -7.1, -8.1, -9.1])
    assert lat.tolist() == [57.5, 58.5, 59.5, 60.5] and acc.tolist() == [14.0, 15.0, 16.0, 17.0]


def test_a_checkpoint_from_before_the_packed_memories_still_loads() -> None:
    old = {
        "last_ts": 1000.0,
        "recent_seqs": [7, 8],
        "seqs": [[0, 8]],
        "positions": [[1000.0, 51.5, -0.1]],
        "payloads": [b"12345678"],
        "history": [[1000.0, -0.1, 51.5, 8.0]],
        "rate": "far",
    }
    st = load_tag(msgspec.msgpack.encode(old))
    assert st.last_ts == 1000.0 and st.seqs == [[0, 8]] and st.rate == "far"
    assert st.last_fixes == st.upload_digests == st.track == b""
