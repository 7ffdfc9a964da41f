"""Movement and device models of the simulator: deterministic, right speeds, honest truth."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from simulators.device import Device, DeviceSpec, Fault
from simulators.movement import (
    Approach,
    Follow,
    Loiter,
    Route,
    Stationary,
    Track,
    distance_m,
    read_trace,
)
from tagwatch.wire import Topics, decode_payload

T0 = 1793700000.0  # 2026-11-02T...Z
HOME = (-0.1275, 51.5073)


def test_route_walks_at_its_speed_and_stops_at_the_end():
    route = Route([HOME, (-0.1150, 51.5073), (-0.1150, 51.5100)], 1.4)
    assert distance_m(route.position(100), route.position(200)) == pytest.approx(140, abs=0.01)
    # across the corner the path is longer than the chord
    assert distance_m(route.position(0), route.position(route.length_m / 1.4 / 2)) > 100
    end = route.position(route.length_m / 1.4 + 500)
    assert distance_m(end, (-0.1150, 51.5100)) < 1e-6


def test_approach_closes_at_its_speed_and_stops_short():
    start = (-0.0770, 51.5073)
    model = Approach(start, HOME, speed_mps=11.0, stop_m=300)
    d0, d1 = distance_m(model.position(10), HOME), distance_m(model.position(20), HOME)
    assert d0 - d1 == pytest.approx(110, abs=0.01)
    assert distance_m(model.position(10_000), HOME) == pytest.approx(300, abs=0.01)


def test_loiter_is_bounded_smooth_and_seeded():
    a = Loiter(HOME, 150, np.random.default_rng(7))
    b = Loiter(HOME, 150, np.random.default_rng(7))
    c = Loiter(HOME, 150, np.random.default_rng(8))
    times = range(0, 7200, 13)
    assert all(distance_m(HOME, a.position(t)) <= 150.01 for t in times)
    assert [a.position(t) for t in times] == [b.position(t) for t in times]
    assert a.position(100) != c.position(100)
    assert max(distance_m(a.position(t), a.position(t + 1)) for t in times) < 3.0  # walking


def test_follow_is_the_leader_lag_seconds_ago():
    leader = Track()
    leader.add(0, lambda _o: Stationary(HOME))
    leader.add(100, lambda o: Route([o, (-0.1150, 51.5073)], 1.4))
    follower = Follow(leader.position, segment_start=200, lag_s=60)
    assert follower.position(50) == leader.position(190)


def test_track_segments_start_where_the_last_one_was():
    track = Track()
    track.add(0, lambda _o: Route([HOME, (-0.1150, 51.5073)], 1.4))
    track.add(300, lambda o: Approach(o, HOME, 1.4))
    assert distance_m(track.position(300), track.position(300 - 1e-6)) < 0.01
    assert distance_m(track.position(450), HOME) == pytest.approx(420 - 210, abs=0.5)


def test_trace_from_csv_and_gpx(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("tag,ts,lat,lon\nX,2026-11-02T10:00:00Z,51.0,-0.1\nX,2026-11-02T10:00:10Z,"
                   "51.001,-0.1\nY,2026-11-02T10:00:00Z,52.0,0.0\n")
    trace = read_trace(csv, "X")
    assert trace.position(5) == pytest.approx((-0.1, 51.0005))
    assert trace.position(100) == (-0.1, 51.001)
    gpx = tmp_path / "t.gpx"
    gpx.write_text('<gpx xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>'
                   '<trkpt lat="51.0" lon="-0.1"><time>2026-11-02T10:00:00Z</time></trkpt>'
                   '<trkpt lat="51.002" lon="-0.1"><time>2026-11-02T10:00:20Z</time></trkpt>'
                   "</trkseg></trk></gpx>")
    assert read_trace(gpx).position(10) == pytest.approx((-0.1, 51.001))


# ---------------------------------------------------------------- devices


def device(seed=1, **spec) -> Device:
    spec.setdefault("id", "T-1")
    return Device(DeviceSpec(**spec), Stationary(HOME), Topics(), T0, np.random.default_rng(seed))


def run(dev: Device, until: float):
    out = []
    while dev.due() <= until:
        out.extend(dev.step())
    return out


def fixes_of(emission) -> list[dict]:
    doc = orjson.loads(emission.payload)
    return doc if isinstance(doc, list) else [doc]


def test_same_seed_same_bytes_and_the_wire_accepts_them():
    a, b = run(device(3, outlier_rate=0.1), 3600), run(device(3, outlier_rate=0.1), 3600)
    assert [e.payload for e in a] == [e.payload for e in b]
    assert [e.payload for e in a] != [e.payload for e in run(device(4, outlier_rate=0.1), 3600)]
    for em in a:
        fixes, rejections = decode_payload("tag", "T-1", em.payload, T0 + em.t + 1)
        assert rejections == [] and len(fixes) == 1


def test_noise_is_honest_and_outliers_are_flagged_overconfident():
    ems = run(device(5, interval_s=10, outlier_rate=0.1), 40_000)
    truths = [t for e in ems for t in e.truths]
    honest = [t for t in truths if not t.outlier]
    outliers = [t for t in truths if t.outlier]
    within = sum(t.error_m <= t.acc for t in honest) / len(honest)
    assert 0.6 < within < 0.76  # acc is the ~68% radius
    assert 0.07 < len(outliers) / len(truths) < 0.13
    assert all(50 <= t.error_m <= 200.5 and t.acc <= 10 for t in outliers)
    assert max(t.error_m for t in honest) < 50


def test_rate_command_changes_the_interval_from_the_latest_fix():
    dev = device(interval_s=60)
    first = dev.step()
    assert first[0].t == 0 and dev.due() == 60
    assert dev.command(b'{"cmd": "rate", "interval_s": 5}') == "rate 5 s"
    assert [e.t for e in run(dev, 20)] == [5, 10, 15, 20]
    dev.command(b'{"cmd": "warn", "text": "Leave now"}')
    assert dev.warnings == ["Leave now"]


def test_no_fix_sends_heartbeats_without_position():
    ems = run(device(faults=[Fault("no_fix", 120, 300)]), 400)
    kinds = [(e.t, fixes_of(e)[0].get("fix"), "lat" in fixes_of(e)[0]) for e in ems]
    assert kinds[2:6] == [(120, "none", False), (180, "none", False), (240, "none", False),
                          (300, None, True)]


def test_no_comms_buffers_and_uploads_an_array_after_the_live_fix():
    fault = Fault("no_comms", 100, 700, upload="after_live", shuffle=True)
    ems = run(device(9, faults=[fault]), 800)
    assert [e.t for e in ems] == [0, 60, 720, 720, 780]
    live, batch = fixes_of(ems[2]), orjson.loads(ems[3].payload)
    assert isinstance(batch, list) and len(batch) == 10 and len(live) == 1
    seqs = [f["seq"] for f in batch]
    assert sorted(seqs) == list(range(2, 12)) and seqs != sorted(seqs)  # out of order
    assert all(not t.live for t in ems[3].truths)


def test_duplicates_skew_tamper_battery_and_jump():
    faults = [
        Fault("duplicates", 0, 200, rate=1.0),
        Fault("skew", 300, 400, offset_s=45.0),
        Fault("tamper", 500, 600),
        Fault("battery", 0, pct=20.0, drain_pct_h=36.0),
        Fault("jump", 700, distance_m=5000.0),
    ]
    ems = run(device(battery_pct=90.0, faults=faults), 800)
    dups = [e for e in ems if e.duplicate]
    assert len(dups) == 4 and all(d.payload == ems[ems.index(d) - 1].payload for d in dups)
    by_t = {e.t: fixes_of(e)[0] for e in ems if not e.duplicate}
    from tagwatch.wire import parse_rfc3339

    assert parse_rfc3339(by_t[360]["ts"].replace("Z", "+00:00")) == T0 + 405
    assert by_t[540]["strap"] == "tamper" and by_t[480]["strap"] == "ok"
    assert by_t[0]["bat"] == 20.0 and by_t[600]["bat"] == pytest.approx(14.0)
    jump = next(t for e in ems for t in e.truths if t.jump)
    assert jump.t == 720 and jump.error_m == pytest.approx(5000, abs=1)
    assert sum(t.jump for e in ems for t in e.truths) == 1


def test_victim_devices_publish_on_their_own_topic_without_tag_fields():
    dev = Device(DeviceSpec("VD-01", kind="victim", battery_pct=None), Stationary(HOME),
                 Topics("p/x"), T0, np.random.default_rng(1))
    em = dev.step()[0]
    assert em.topic == "p/x/victims/VD-01/fix"
    assert set(orjson.loads(em.payload)) == {"ts", "seq", "lat", "lon", "acc"}
    assert not math.isinf(dev.due())
