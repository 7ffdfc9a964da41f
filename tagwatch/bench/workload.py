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
