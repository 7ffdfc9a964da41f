"""Properties of `ZoneSet.evaluate` on random zone sets and random fixes (hypothesis).

The batch answer is compared with a scalar reference written here: one fix and
one zone at a time, projected with the zone's own `frame.project`, then shapely
on a single Point in that metric frame (or the circle formula). Geodesic
accuracy of that frame is tests/test_zones_accuracy.py's business.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import Geod
from shapely.geometry import LinearRing, Point

from zones import Schedule, Zone, ZoneSet, parse_case

GEOD = Geod(ellps="WGS84")
TAGS = ("T-1", "T-2", "T-3")
SAME_M = 1e-6  # batch and scalar use different numpy reductions: allow rounding, nothing more

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- building cases ----------------------------------------------------------------------------


def ring_around(lon: float, lat: float, radii: list[float], turn: float = 0.0) -> list[list[float]]:
    """A closed star-shaped ring: one vertex per radius at evenly spaced azimuths."""
    az = turn + np.arange(len(radii)) * 360.0 / len(radii)
    lons, lats, _ = GEOD.fwd(np.full(len(radii), lon), np.full(len(radii), lat), az, radii)
    ring = [[float(x), float(y)] for x, y in zip(lons, lats, strict=True)]
    return [*ring, ring[0]]


def moved(lon: float, lat: float, az: float, dist: float) -> tuple[float, float]:
    lon2, lat2, _ = GEOD.fwd(lon, lat, az, dist)
    return float(lon2), float(lat2)


def feature(zone_id: str, geometry: dict, **props: object) -> dict:
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {"zone": zone_id, "kind": "exclusion", **props},
    }


def case_doc(case_id: str, tags: list[str], features: list[dict]) -> dict:
    return {
        "type": "FeatureCollection",
        "case": {"id": case_id, "tags": tags, "timezone": "Europe/London"},
        "features": features,
    }


radius = st.floats(min_value=30.0, max_value=500.0)


@st.composite
def zone_feature(draw: st.DrawFn, zone_id: str, lon: float, lat: float) -> dict:
    kind = draw(st.sampled_from(["polygon", "holed", "multi", "circle"]))
    turn = draw(st.floats(0.0, 360.0))
    if kind == "circle":
        return feature(zone_id, {"type": "Point", "coordinates": [lon, lat]}, radius_m=draw(radius))
    if kind == "polygon":
        radii = draw(st.lists(radius, min_size=3, max_size=20))
        return feature(
            zone_id, {"type": "Polygon", "coordinates": [ring_around(lon, lat, radii, turn)]}
        )
    if kind == "holed":
        outer = draw(st.lists(st.floats(300.0, 500.0), min_size=6, max_size=16))
        hole = ring_around(lon, lat, [draw(st.floats(20.0, 200.0))] * 6, turn)
        rings = [ring_around(lon, lat, outer, turn), hole]
        return feature(zone_id, {"type": "Polygon", "coordinates": rings})
    parts = []
    for az in (90.0, 270.0):  # two stars 1 km either side: disjoint
        plon, plat = moved(lon, lat, az, 1000.0)
        radii = draw(st.lists(st.floats(30.0, 450.0), min_size=3, max_size=10))
        parts.append([ring_around(plon, plat, radii, turn)])
    return feature(zone_id, {"type": "MultiPolygon", "coordinates": parts})


@st.composite
def zone_sets(draw: st.DrawFn) -> ZoneSet:
    lon = draw(st.floats(-180.0, 180.0))
    lat = draw(st.floats(-85.0, 85.0))
    cases = []
    for c in range(draw(st.integers(1, 3))):
        tags = draw(st.lists(st.sampled_from(TAGS), min_size=1, max_size=3, unique=True))
        features = []
        for z in range(draw(st.integers(1, 3))):
            zlon, zlat = moved(lon, lat, draw(st.floats(0.0, 360.0)), draw(st.floats(0.0, 5000.0)))
            features.append(draw(zone_feature(f"z{z}", zlon, zlat)))
        cases.append(parse_case(case_doc(f"C-{c}", tags, features), f"<case {c}>"))
    return ZoneSet(cases)


def fixes_around(zone_set: ZoneSet, seed: int, n: int = 60):
    """Fixes near random zones: a third within the zone's reach, the rest up to 30 km out."""
    rng = np.random.default_rng(seed)
    zones = rng.integers(0, len(zone_set.zones), n)
    lon0 = np.array([zone_set.zones[k].frame.lon for k in zones])
    lat0 = np.array([zone_set.zones[k].frame.lat for k in zones])
    reach = zone_set.zone_reach[zones]
    near = rng.random(n) < 0.35
    dist = np.where(near, rng.uniform(0.0, 1.2, n) * reach, np.exp(rng.uniform(0.0, 10.3, n)))
    lon, lat, _ = GEOD.fwd(lon0, lat0, rng.uniform(-180.0, 180.0, n), dist)
    tag_names = rng.choice([*TAGS, "T-none"], n)
    return zone_set.tag_indices(tag_names.tolist()), np.asarray(lon), np.asarray(lat)


# --- the scalar reference ----------------------------------------------------------------------


def scalar_row(zone: Zone, lon: float, lat: float) -> tuple[bool, float]:
    east, north = zone.frame.project(np.array([lon]), np.array([lat]))
    x, y = float(east[0]), float(north[0])
    if zone.shape is None:
        distance = math.hypot(x, y) - zone.radius_m
        return distance <= 0.0, distance
    point = Point(x, y)
    inside = bool(zone.shape.covers(point))
    to_edge = zone.shape.boundary.distance(point)
    return inside, -to_edge if inside else to_edge


def expected_zones(zone_set: ZoneSet, tag: int) -> list[int]:
    if tag < 0:
        return []
    name = zone_set.tags[tag]
    return [k for k, z in enumerate(zone_set.zones) if name in _case_tags(zone_set, z.case_id)]


def _case_tags(zone_set: ZoneSet, case_id: str) -> tuple[str, ...]:
    return next(c.tags for c in zone_set.cases if c.id == case_id)


def rows_by_pair(result) -> dict[tuple[int, int], tuple[bool, float]]:
    pairs = zip(result.fix.tolist(), result.zone.tolist(), strict=True)
    values = zip(result.inside.tolist(), result.distance_m.tolist(), strict=True)
    rows = dict(zip(pairs, values, strict=True))
    assert len(rows) == len(result), "a (fix, zone) pair appears twice"
    return rows


# --- properties --------------------------------------------------------------------------------


@SETTINGS
@given(zone_set=zone_sets(), seed=st.integers(0, 2**32 - 1))
def test_batch_equals_scalar_reference(zone_set: ZoneSet, seed: int) -> None:
    tags, lon, lat = fixes_around(zone_set, seed)
    rows = rows_by_pair(zone_set.evaluate(tags, lon, lat))
    expected = {(f, k) for f, t in enumerate(tags.tolist()) for k in expected_zones(zone_set, t)}
    assert set(rows) == expected
    for (f, k), (inside, distance) in rows.items():
        ref_inside, ref_distance = scalar_row(zone_set.zones[k], lon[f], lat[f])
        assert math.isclose(distance, ref_distance, abs_tol=SAME_M), (f, k, distance, ref_distance)
        if abs(ref_distance) > SAME_M:
            assert inside == ref_inside, (f, k, distance, ref_distance)


@SETTINGS
@given(zone_set=zone_sets(), seed=st.integers(0, 2**32 - 1))
def test_sign_of_distance_agrees_with_inside(zone_set: ZoneSet, seed: int) -> None:
    tags, lon, lat = fixes_around(zone_set, seed)
    result = zone_set.evaluate(tags, lon, lat)
    assert result.inside.dtype == bool and result.distance_m.dtype == np.float64
    assert np.array_equal(result.inside, result.distance_m <= 0.0)
    assert np.all(np.isfinite(result.distance_m))


@SETTINGS
@given(
    zone_set=zone_sets(),
    seed=st.integers(0, 2**32 - 1),
    horizon=st.one_of(st.just(0.0), st.floats(0.0, 20_000.0)),
)
def test_horizon_keeps_near_rows_and_bounds_far_ones(
    zone_set: ZoneSet, seed: int, horizon: float
) -> None:
    tags, lon, lat = fixes_around(zone_set, seed)
    exact = zone_set.evaluate(tags, lon, lat)
    cut = zone_set.evaluate(tags, lon, lat, horizon_m=horizon)
    assert np.array_equal(exact.fix, cut.fix) and np.array_equal(exact.zone, cut.zone)
    within = exact.distance_m <= horizon
    assert np.array_equal(cut.distance_m[within], exact.distance_m[within])
    assert np.array_equal(cut.inside[within], exact.inside[within])
    beyond = cut.distance_m > horizon
    assert np.all(within | beyond), "a row is neither exact nor beyond the horizon"
    assert not cut.inside[beyond].any()
    assert np.all(cut.distance_m[beyond] <= exact.distance_m[beyond])


@settings(max_examples=25, deadline=None)
@given(
    lon=st.floats(-180.0, 180.0),
    lat=st.floats(-80.0, 80.0),
    outer=st.lists(st.floats(300.0, 500.0), min_size=6, max_size=16),
    hole_r=st.floats(20.0, 200.0),
    az=st.floats(0.0, 360.0),
    frac=st.floats(0.0, 0.8),
)
def test_point_in_a_hole_is_outside_and_measures_to_the_hole(
    lon: float, lat: float, outer: list[float], hole_r: float, az: float, frac: float
) -> None:
    hole = ring_around(lon, lat, [hole_r] * 6)
    doc = case_doc("C-h", ["T-1"], [feature("h", {"type": "Polygon", "coordinates": [
        ring_around(lon, lat, outer), hole]})])  # fmt: skip
    zone_set = ZoneSet([parse_case(doc, "<hole>")])
    # Within 0.8 of the hexagon's apothem from its centre: inside the hole for certain.
    flon, flat = moved(lon, lat, az, frac * hole_r * math.cos(math.pi / 6))
    result = zone_set.evaluate(np.array([0]), np.array([flon]), np.array([flat]))
    assert len(result) == 1 and not result.inside[0] and result.distance_m[0] > 0.0
    zone = zone_set.zones[0]
    east, north = zone.frame.project(np.array([flon]), np.array([flat]))
    point = Point(east[0], north[0])
    to_hole = LinearRing(zone.shape.interiors[0].coords).distance(point)
    to_outer = LinearRing(zone.shape.exterior.coords).distance(point)
    assert math.isclose(result.distance_m[0], to_hole, abs_tol=SAME_M)
    assert to_hole < to_outer
    if frac == 0.0:  # at the centre: the hexagon's apothem, geodesically to 0.25 m
        assert abs(result.distance_m[0] - hole_r * math.cos(math.pi / 6)) < 0.25


@settings(max_examples=25, deadline=None)
@given(
    lon=st.floats(-180.0, 180.0),
    lat=st.floats(-80.0, 80.0),
    radii=st.lists(st.floats(100.0, 400.0), min_size=3, max_size=10),
)
def test_multipolygon_inside_either_part_is_inside(
    lon: float, lat: float, radii: list[float]
) -> None:
    west, east = moved(lon, lat, 270.0, 1000.0), moved(lon, lat, 90.0, 1000.0)
    parts = [[ring_around(*west, radii)], [ring_around(*east, radii)]]
    doc = case_doc("C-m", ["T-1"], [feature("m", {"type": "MultiPolygon", "coordinates": parts})])
    zone_set = ZoneSet([parse_case(doc, "<multi>")])
    probe_lon = np.array([west[0], east[0], lon])
    probe_lat = np.array([west[1], east[1], lat])
    result = zone_set.evaluate(np.zeros(3, dtype=np.int64), probe_lon, probe_lat)
    assert result.inside.tolist() == [True, True, False]
    # The centres are at least min(radii) * cos(180° / n) from their part's edges.
    depth = min(radii) * math.cos(math.pi / len(radii)) - 1.0
    assert result.distance_m[0] < -depth and result.distance_m[1] < -depth
    # Between the parts: 1 km from each centre, the largest radius gone at most.
    assert result.distance_m[2] >= 1000.0 - max(radii) - 1.0


def _two_cases_one_tag() -> ZoneSet:
    circle = {"type": "Point", "coordinates": [-0.1, 51.5]}
    polygon = {"type": "Polygon", "coordinates": [ring_around(-0.12, 51.51, [200.0] * 5)]}
    first = case_doc(
        "C-a", ["T-1", "T-2"], [feature("a1", circle, radius_m=100), feature("a2", polygon)]
    )
    second = case_doc("C-b", ["T-1"], [feature("b1", circle, radius_m=300)])
    third = case_doc("C-c", ["T-3"], [feature("c1", polygon)])
    return ZoneSet([parse_case(doc, f"<{doc['case']['id']}>") for doc in (first, second, third)])


def test_tag_in_no_case_yields_no_rows() -> None:
    zone_set = _two_cases_one_tag()
    assert zone_set.tag_index("T-nowhere") == -1
    assert zone_set.tag_indices(["T-nowhere", "T-3"]).tolist() == [-1, zone_set.tag_index("T-3")]
    alone = zone_set.evaluate(np.array([-1, -1]), np.array([-0.1, 0.0]), np.array([51.5, 0.0]))
    assert len(alone) == 0 and alone.fix.dtype == np.int64 and alone.distance_m.shape == (0,)
    mixed = zone_set.evaluate(
        zone_set.tag_indices(["T-nowhere", "T-3", "T-nowhere"]),
        np.array([-0.1, -0.1, -0.1]),
        np.array([51.5, 51.5, 51.5]),
    )
    assert mixed.fix.tolist() == [1]


def test_tag_in_two_cases_yields_rows_for_both() -> None:
    zone_set = _two_cases_one_tag()
    result = zone_set.evaluate(zone_set.tag_indices(["T-1"]), np.array([-0.1]), np.array([51.5]))
    got = sorted((zone_set.zones[k].case_id, zone_set.zones[k].zone_id) for k in result.zone)
    assert got == [("C-a", "a1"), ("C-a", "a2"), ("C-b", "b1")]
    by_zone = {
        zone_set.zones[k].zone_id: d for k, d in zip(result.zone, result.distance_m, strict=True)
    }
    assert math.isclose(by_zone["a1"], -100.0, abs_tol=1e-6)
    assert math.isclose(by_zone["b1"], -300.0, abs_tol=1e-6)
    only_first = zone_set.evaluate(
        zone_set.tag_indices(["T-2"]), np.array([-0.1]), np.array([51.5])
    )
    assert sorted(zone_set.zones[k].zone_id for k in only_first.zone) == ["a1", "a2"]


def test_nan_positions_yield_no_rows() -> None:
    zone_set = _two_cases_one_tag()
    tag = zone_set.tag_index("T-3")
    lon = np.array([np.nan, -0.12, -0.12, np.inf, -0.12])
    lat = np.array([51.51, np.nan, 51.51, 51.51, 51.51])
    result = zone_set.evaluate(np.full(5, tag), lon, lat)
    assert result.fix.tolist() == [2, 4]
    assert np.all(np.isfinite(result.distance_m)) and result.inside.all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_active_follows_each_zones_schedule(seed: int) -> None:
    circle = {"type": "Point", "coordinates": [-0.1, 51.5]}
    doc = case_doc("C-s", ["T-1"], [
        feature("always", circle, radius_m=50),
        feature("school", circle, radius_m=50, schedule=["Mon-Fri 08:00-16:00"]),
        feature("night", circle, radius_m=50, schedule=["Mon-Sun 19:00-07:00"]),
    ])  # fmt: skip
    zone_set = ZoneSet([parse_case(doc, "<sched>")])
    rng = np.random.default_rng(seed)
    ts = rng.uniform(1.7e9, 1.9e9, 50)
    result = zone_set.evaluate(
        np.zeros(50, dtype=np.int64), np.full(50, -0.1), np.full(50, 51.5), ts
    )
    for k, zone in enumerate(zone_set.zones):
        rows = result.zone == k
        schedule: Schedule | None = zone.schedule
        want = np.ones(50, bool) if schedule is None else schedule.active(ts[result.fix[rows]])
        assert np.array_equal(result.active[rows], want), zone.zone_id
    no_time = zone_set.evaluate(np.zeros(3, dtype=np.int64), np.full(3, -0.1), np.full(3, 51.5))
    assert no_time.active.all()


def test_case_without_zones_yields_no_rows() -> None:
    zone_set = ZoneSet([parse_case(case_doc("C-0", ["T-1"], []), "<empty case>")])
    result = zone_set.evaluate(zone_set.tag_indices(["T-1"]), np.array([-0.1]), np.array([51.5]))
    assert zone_set.tags == ("T-1",) and len(result) == 0


def test_empty_zone_set_yields_no_rows() -> None:
    # No case loaded (an empty cases folder, or every file refused) while fixes keep arriving.
    zone_set = ZoneSet([])
    tags = zone_set.tag_indices(["T-1", "T-2"])
    assert zone_set.tags == () and tags.tolist() == [-1, -1]
    result = zone_set.evaluate(tags, np.array([-0.1, 0.2]), np.array([51.5, 51.6]))
    assert len(result) == 0
