"""`tagwatch bench core`: the geometry core beside a naive per-point loop, in one run.

The naive way is what a careful user would write without batching: for each
fix and each zone of its tag, project the point into the zone's metric frame,
build a shapely Point, and call contains and distance. It is timed on a sample
of the same fixes (it is too slow for all of them) and checked against the
core's answers, so the ratio compares two implementations that agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from shapely.geometry import Point

from tagwatch.bench.report import Progress
from tagwatch.bench.workload import Fixes, fixes_near_zones, london_cases
from zones import ZoneSet, ecef

# The rules never need an exact distance beyond approach_max_m (3000 m by default).
RULES_HORIZON_M = 3000.0


def run(tags: int = 10_000, fixes: int = 1_000_000, naive_sample: int = 20_000) -> dict:
    progress = Progress("bench core")
    progress.step(f"building {tags:,} cases across Greater London")
    cases = london_cases(tags)
    zoneset = ZoneSet(cases)
    progress.step(f"generating {fixes:,} fixes")
    batch = fixes_near_zones(cases, {t: zoneset.tag_index(t) for t in zoneset.tags}, fixes)
    progress.step("timing the core (horizon 3 km, then exact everywhere)")
    core_s = _best_of(3, lambda: zoneset.evaluate(*_args(batch), horizon_m=RULES_HORIZON_M))
    exact_s = _best_of(3, lambda: zoneset.evaluate(*_args(batch)))
    progress.step(f"timing the naive loop on {naive_sample:,} fixes")
    sample = np.random.default_rng(3).choice(fixes, naive_sample, replace=False)
    naive_s, naive_rows = _time_naive(zoneset, batch, sample)
    _check_agreement(zoneset, batch, sample, naive_rows)
    progress.done()
    core_rate = fixes / core_s
    naive_rate = naive_sample / naive_s
    return {
        "benchmark": "core",
        "tags": tags,
        "zones": len(zoneset.zones),
        "fixes": fixes,
        "pairs_per_fix": round(len(zoneset.pairs(batch.tag_idx)[0]) / fixes, 2),
        "core_fixes_per_s": round(core_rate),
        "core_exact_fixes_per_s": round(fixes / exact_s),
        "naive_fixes_per_s": round(naive_rate),
        "ratio": round(core_rate / naive_rate, 1),
        "exact_ratio": round(fixes / exact_s / naive_rate, 1),
    }


def _args(batch: Fixes):
    return batch.tag_idx, batch.lon, batch.lat, batch.ts


def _best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _time_naive(zoneset: ZoneSet, batch: Fixes, sample: np.ndarray):
    zones = zoneset.zones
    zone_lists = [zoneset.zones_of(tag) for tag in zoneset.tags]
    # Each zone's frame set up once, before the clock starts, as a user would.
    frames = {z: (zones[z].frame.origin, zones[z].frame.rotation.T) for z in range(len(zones))}
    shapes = {z: zones[z].shape for z in frames if not zones[z].is_circle}
    boundaries = {z: shape.boundary for z, shape in shapes.items()}
    rows = []
    start = time.perf_counter()
    for i in sample.tolist():
        lon, lat = batch.lon[i : i + 1], batch.lat[i : i + 1]
        for z in zone_lists[batch.tag_idx[i]]:
            zone = zones[z]
            origin, rotation = frames[z]
            east, north = ((ecef(lon, lat) - origin) @ rotation)[0]
            point = Point(east, north)
            if zone.is_circle:
                distance = point.distance(Point(0, 0)) - zone.radius_m
                inside = distance <= 0
            else:
                inside = shapes[z].intersects(point)
                distance = boundaries[z].distance(point)
                distance = -distance if inside else distance
            active = zone.schedule is None or bool(zone.schedule.active(batch.ts[i : i + 1])[0])
            rows.append((i, z, inside, distance, active))
    return time.perf_counter() - start, rows


def _check_agreement(zoneset: ZoneSet, batch: Fixes, sample: np.ndarray, rows: list) -> None:
    sub = Fixes(batch.tag_idx[sample], batch.lon[sample], batch.lat[sample], batch.ts[sample])
    ev = zoneset.evaluate(*_args(sub))
    got = sorted(zip(sample[ev.fix].tolist(), ev.zone.tolist(), strict=True))
    want = sorted((r[0], r[1]) for r in rows)
    if got != want:
        raise AssertionError("core and naive loop disagree on which pairs to evaluate")
    order = np.lexsort((ev.zone, sample[ev.fix]))
    naive = sorted(rows)
    if not np.array_equal(ev.inside[order], [r[2] for r in naive]):
        raise AssertionError("core and naive loop disagree on inside")
    if not np.allclose(ev.distance_m[order], [r[3] for r in naive], atol=1e-6):
        raise AssertionError("core and naive loop disagree on distance")
    if not np.array_equal(ev.active[order], [r[4] for r in naive]):
        raise AssertionError("core and naive loop disagree on schedules")


def main(as_json: bool, small: bool = False) -> dict:
    if small:
        return run(tags=500, fixes=50_000, naive_sample=2_000)
    return run()


RESULT_LINES: list[tuple[str, str]] = [
    ("core_fixes_per_s", "tagwatch core (3 km horizon)"),
    ("core_exact_fixes_per_s", "tagwatch core (exact everywhere)"),
    ("naive_fixes_per_s", "naive loop (Point per fix and zone)"),
    ("ratio", "ratio core / naive"),
    ("exact_ratio", "ratio core exact / naive"),
]
