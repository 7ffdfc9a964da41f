"""Synthetic but realistic workloads for the shipped benchmarks.

Cases across Greater London: each tag has its own case with 1 to 5 zones,
polygons of 16 to 200 vertices (star-shaped, so concave) and circles, some with
school-hours schedules. Fixes fall mostly kilometres from their tag's zones,
as real ones do: an offender spends most of the day far from the victim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyproj import Geod

from zones import Case, parse_case

GEOD = Geod(ellps="WGS84")
LONDON = (-0.50, 51.30, 0.30, 51.70)  # lon/lat box of Greater London
SCHOOL_HOURS = ["Mon-Fri 08:00-16:00"]


@dataclass(frozen=True)
class Fixes:
    tag_idx: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    ts: np.ndarray


def london_cases(n_tags: int, seed: int = 1) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [parse_case(_case_doc(i, rng), f"bench-case-{i}") for i in range(n_tags)]


def _case_doc(i: int, rng: np.random.Generator) -> dict:
    lon0 = rng.uniform(LONDON[0], LONDON[2])
    lat0 = rng.uniform(LONDON[1], LONDON[3])
    features = []
    for k in range(int(rng.integers(1, 6))):
        # Zones of one victim lie within a few km of each other (home, work, school).
        lon, lat, _ = GEOD.fwd(lon0, lat0, rng.uniform(0, 360), rng.uniform(0, 4000))
        props: dict = {"zone": f"z{k}", "kind": "exclusion", "warn_m": 250}
        if rng.random() < 0.3:
            props["schedule"] = SCHOOL_HOURS
        if rng.random() < 0.4:
            geometry = {"type": "Point", "coordinates": [lon, lat]}
            props["radius_m"] = float(rng.uniform(50, 300))
        else:
            geometry = {"type": "Polygon", "coordinates": [_star(lon, lat, rng)]}
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return {
        "type": "FeatureCollection",
        "case": {"id": f"C-{i:05d}", "tags": [f"T-{i:05d}"], "timezone": "Europe/London"},
        "features": features,
    }


def household_cases(n_tags: int, seed: int = 13) -> list[Case]:
    """Cases shaped like DESIGN's example: a home polygon (8 vertices), a work
    polygon (12) and a school circle with school hours, one victim with a phone
    and a device. For memory figures: what a real caseload holds."""
    rng = np.random.default_rng(seed)
    return [parse_case(_household(i, rng), f"household-{i}") for i in range(n_tags)]


def _household(i: int, rng: np.random.Generator) -> dict:
    lon, lat = rng.uniform(LONDON[0], LONDON[2]), rng.uniform(LONDON[1], LONDON[3])
    work_lon, work_lat, _ = GEOD.fwd(lon, lat, rng.uniform(0, 360), rng.uniform(1000, 8000))
    school_lon, school_lat, _ = GEOD.fwd(lon, lat, rng.uniform(0, 360), rng.uniform(300, 2000))

    def zone(name: str, geometry: dict, **props) -> dict:
        props = {"zone": name, "kind": "exclusion", "victim": "V-01", **props}
        return {"type": "Feature", "geometry": geometry, "properties": props}

    return {
        "type": "FeatureCollection",
        "case": {
            "id": f"C-{i:06d}",
            "tags": [f"T-{i:06d}"],
            "timezone": "Europe/London",
            "victims": [{"id": "V-01", "phone": "+447700900123", "device": f"VD-{i:06d}"}],
        },
        "features": [
            zone("home", {"type": "Polygon", "coordinates": [_ring(lon, lat, 8, 40)]}),
            zone("work", {"type": "Polygon", "coordinates": [_ring(work_lon, work_lat, 12, 80)]}),
            zone(
                "school",
                {"type": "Point", "coordinates": [school_lon, school_lat]},
                radius_m=150,
                schedule=SCHOOL_HOURS,
            ),
        ],
    }


def _ring(lon: float, lat: float, n: int, radius_m: float) -> list[list[float]]:
    azimuths = np.linspace(0, 360, n, endpoint=False)
    lons, lats, _ = GEOD.fwd(np.full(n, lon), np.full(n, lat), azimuths, np.full(n, radius_m))
    ring = np.column_stack((lons, lats)).tolist()
    return [*ring, ring[0]]


def _star(lon: float, lat: float, rng: np.random.Generator) -> list[list[float]]:
    n = int(rng.integers(16, 201))
    azimuths = np.sort(rng.uniform(0, 360, n))
    radii = rng.uniform(60, 400) * rng.uniform(0.5, 1.0, n)
    lons, lats, _ = GEOD.fwd(np.full(n, lon), np.full(n, lat), azimuths, radii)
    ring = np.column_stack((lons, lats)).tolist()
    return [*ring, ring[0]]


def fixes_near_zones(
    cases: list[Case], tag_index: dict[str, int], n_fixes: int, seed: int = 2
) -> Fixes:
    """Fixes for random tags, at a distance from one of the tag's zones of:
    3 to 25 km for 88% (the offender's own life across the city), 300 m to
    3 km for 9% (passing by, approaching), and within 300 m for 3%.
    """
    rng = np.random.default_rng(seed)
    case_of_fix = rng.integers(0, len(cases), n_fixes)
    centres = np.array([_zone_centre(c, rng) for c in cases])
    band = rng.random(n_fixes)
    dist = np.where(
        band < 0.88,
        rng.uniform(3000, 25000, n_fixes),
        np.where(band < 0.97, rng.uniform(300, 3000, n_fixes), rng.uniform(0, 300, n_fixes)),
    )
    lon, lat, _ = GEOD.fwd(
        centres[case_of_fix, 0], centres[case_of_fix, 1], rng.uniform(0, 360, n_fixes), dist
    )
    tags = np.array([tag_index[c.tags[0]] for c in cases], dtype=np.int64)
    week = 7 * 86400
    ts = 1_795_000_000 + np.sort(rng.uniform(0, week, n_fixes))
    return Fixes(tags[case_of_fix], np.asarray(lon), np.asarray(lat), ts)


def _zone_centre(case: Case, rng: np.random.Generator) -> tuple[float, float]:
    zone = case.zones[int(rng.integers(0, len(case.zones)))]
    return zone.frame.lon, zone.frame.lat
