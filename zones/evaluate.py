"""Batch evaluation of fixes against their tags' zones.

Arrays in, arrays out. For a batch of fixes (tag index, lon, lat, time) the
result has one row per (fix, zone of the fix's tag's cases): inside, signed
distance to the boundary in metres (negative inside), schedule active.

How it stays fast (DESIGN 6):
- one pyproj call per batch (fixes to ECEF);
- each tag has a bounding sphere around all its zones: a fix farther than
  `horizon_m` from it is far from every zone of its tag, and costs one
  distance; its rows carry the lower bound `distance to sphere` (> horizon_m);
- the other fixes' (fix, zone) pairs are rotated into their zone's frame with
  numpy, all pairs at once;
- circles are answered exactly by arithmetic (distance to the centre minus the
  radius);
- a polygon pair farther than `horizon_m` from its zone's reach circle (the
  circle around the frame's centre through the farthest vertex) is outside for
  certain, and its distance is reported as the lower bound `distance to centre
  - reach` (which is > horizon_m);
- only the pairs within the horizon go to shapely, in one vectorised distance
  call (zero: inside), and the few inside pairs in one more, to the boundary.

The ZoneSet holds each polygon once, as a plain GEOS polygon in its zone's
frame: no prepared index and no boundary object (together 0.6 KB a polygon,
which a caseload of 100,000 cases would hold for its few inside fixes), and the
zones themselves keep only their WKB.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import shapely

from zones.geodesy import ecef, enu_rotations
from zones.models import EXCLUSION, Case, Zone
from zones.schedule import Schedule, local_clock


@dataclass(frozen=True)
class Evaluation:
    """One row per (fix, zone) pair; `fix` indexes the input arrays, `zone` ZoneSet.zones."""

    fix: np.ndarray  # int64
    zone: np.ndarray  # int64
    inside: np.ndarray  # bool; a fix on the boundary is inside
    distance_m: np.ndarray  # float64; signed, negative inside; a lower bound beyond horizon_m
    active: np.ndarray  # bool; the zone's schedule is active at the fix's time

    def __len__(self) -> int:
        return len(self.fix)


class ZoneSet:
    """All zones of a set of cases, prepared for batch evaluation. Immutable."""

    def __init__(self, cases: Sequence[Case]) -> None:
        self.cases = tuple(cases)
        self.zones: tuple[Zone, ...] = tuple(z for c in self.cases for z in c.zones)
        self.tags: tuple[str, ...] = tuple(sorted({t for c in self.cases for t in c.tags}))
        self._tag_index = {tag: i for i, tag in enumerate(self.tags)}
        self._index_zones()
        self._index_tags()
        self._bound_tags()

    def tag_index(self, tag: str) -> int:
        """Index of a tag in `tags`, or -1 for a tag in no case."""
        return self._tag_index.get(tag, -1)

    def tag_indices(self, tags: Iterable[str]) -> np.ndarray:
        # map() with dict.get runs without a Python frame per tag: one per fix
        return np.fromiter(map(self._tag_index.get, tags, repeat(-1)), dtype=np.int64)

    def zones_of(self, tag: str) -> list[int]:
        i = self.tag_index(tag)
        if i < 0:
            return []
        return self.tag_zones[self.tag_zone_ptr[i] : self.tag_zone_ptr[i + 1]].tolist()

    def _index_zones(self) -> None:
        zones = self.zones
        self.zone_case = np.array(
            [i for i, c in enumerate(self.cases) for _ in c.zones], dtype=np.int64
        )
        self.zone_exclusion = np.array([z.kind == EXCLUSION for z in zones], dtype=bool)
        self.zone_circle = np.array([z.is_circle for z in zones], dtype=bool)
        self.zone_radius = np.array([z.radius_m or 0.0 for z in zones], dtype=np.float64)
        # Every zone's frame at once: one pyproj call, not one per zone.
        lon = np.array([z.frame.lon for z in zones], dtype=np.float64)
        lat = np.array([z.frame.lat for z in zones], dtype=np.float64)
        rotation = enu_rotations(lon, lat).reshape(-1, 2, 3)
        self._origin = ecef(lon, lat).reshape(-1, 3)
        self._east = rotation[:, 0, :]
        self._north = rotation[:, 1, :]
        self._index_shapes()
        schedules = sorted({z.schedule for z in zones if z.schedule}, key=repr)
        self._schedules: tuple[Schedule, ...] = tuple(schedules)
        sched_id = {s: i for i, s in enumerate(schedules)}
        self.zone_schedule = np.array(
            [sched_id[z.schedule] if z.schedule else -1 for z in zones], dtype=np.int64
        )

    def _index_shapes(self) -> None:
        """Every polygon in its zone's frame, as GEOS polygons (circles: None)."""
        polygons = np.flatnonzero(~self.zone_circle)
        self.zone_reach = self.zone_radius.copy()  # the radius for a circle
        self._shapes = np.full(len(self.zones), None, dtype=object)
        # A few thousand zones at a time: the lon/lat polygons made on the way would
        # otherwise all exist at once for a whole caseload.
        for start in range(0, len(polygons), 4096):
            self._project(polygons[start : start + 4096])

    def _project(self, polygons: np.ndarray) -> None:
        """The shapes and reach of some polygon zones, projected in one pass."""
        drawn = shapely.from_wkb([self.zones[z].drawn for z in polygons.tolist()])
        lonlat, owner = shapely.get_coordinates(drawn, return_index=True)
        zone = polygons[owner]
        x, y = self._to_local(ecef(*lonlat.T), zone)
        self._shapes[polygons] = shapely.set_coordinates(drawn, np.column_stack((x, y)))
        # The reach: the farthest vertex from the frame's centre.
        np.maximum.at(self.zone_reach, zone, np.hypot(x, y))

    def _index_tags(self) -> None:
        # CSR layout: the zones of tag t are tag_zones[tag_zone_ptr[t]:tag_zone_ptr[t+1]],
        # in case order. Built with numpy: a caseload can hold 100,000 tags.
        case_tag = [(c, self._tag_index[t]) for c, case in enumerate(self.cases) for t in case.tags]
        case_of, tag_of = np.array(case_tag, dtype=np.int64).reshape(-1, 2).T
        per_case = np.array([len(c.zones) for c in self.cases], dtype=np.int64)
        case_first = np.cumsum(per_case) - per_case
        counts = per_case[case_of]  # zones of each (case, tag)
        tag = np.repeat(tag_of, counts)
        # Row r of a (case, tag) pair starting at row s is its case's zone r - s:
        # zone = case_first + (r - s), with (case_first - s) repeated over the pair's rows.
        zone = np.repeat(case_first[case_of] - (np.cumsum(counts) - counts), counts)
        zone += np.arange(len(zone))
        order = np.lexsort((zone, tag))
        self.tag_zones = zone[order]
        per_tag = np.bincount(tag, minlength=len(self.tags))
        self.tag_zone_ptr = np.concatenate(([0], np.cumsum(per_tag))).astype(np.int64)

    def _bound_tags(self) -> None:
        # A sphere around all of a tag's zones (ECEF): the fix-level prefilter.
        # 3-D distances are chords, never longer than the geodesic, so
        # `|fix - centre| - radius` is a true lower bound of the distance to
        # every zone; 1 m covers the zones' curvature below their tangent plane.
        n = len(self.tags)
        counts = np.diff(self.tag_zone_ptr)
        owner = np.repeat(np.arange(n), counts)
        origin = self._origin[self.tag_zones]
        total = np.stack([np.bincount(owner, origin[:, d], minlength=n) for d in range(3)], 1)
        self._tag_centre = total / np.maximum(counts, 1)[:, None]
        spread = np.linalg.norm(origin - self._tag_centre[owner], axis=1)
        self._tag_radius = np.zeros(n)
        np.maximum.at(self._tag_radius, owner, spread + self.zone_reach[self.tag_zones] + 1.0)

    def pairs(self, tag_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fix, zone) index pairs for every zone of every fix's tag; tag -1 has none."""
        tag_idx = np.asarray(tag_idx, dtype=np.int64)
        if len(self.tags) == 0:
            tag_idx = np.full(len(tag_idx), -1, dtype=np.int64)
            return tag_idx[:0], tag_idx[:0]
        known = tag_idx >= 0
        starts = np.where(known, self.tag_zone_ptr[np.maximum(tag_idx, 0)], 0)
        ends = np.where(known, self.tag_zone_ptr[np.maximum(tag_idx, 0) + 1], 0)
        counts = ends - starts
        fix = np.repeat(np.arange(len(tag_idx), dtype=np.int64), counts)
        # The k-th pair of a fix is its tag's k-th zone; gathers beat a second repeat.
        offsets = np.arange(len(fix), dtype=np.int64) - (np.cumsum(counts) - counts)[fix]
        return fix, self.tag_zones[starts[fix] + offsets]

    def evaluate(
        self,
        tag_idx: np.ndarray,
        lon: np.ndarray,
        lat: np.ndarray,
        ts: np.ndarray | None = None,
        horizon_m: float = np.inf,
        xyz: np.ndarray | None = None,
    ) -> Evaluation:
        """Evaluate fixes against their tags' zones; `ts` (Unix s) None means all active.

        `xyz` may pass the fixes' ECEF coordinates when the caller has them already.
        """
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        # Positions that cannot be on Earth have no rows (the decoder refuses them first).
        valid = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
        if ts is not None:
            valid &= np.isfinite(np.asarray(ts, dtype=np.float64))
        tag_idx = np.where(valid, tag_idx, -1)
        fix, zone = self.pairs(tag_idx)
        if len(fix) == 0:
            return _empty()
        xyz = ecef(lon, lat) if xyz is None else xyz
        bound = self._tag_bound(tag_idx, xyz)
        near = bound[fix] <= horizon_m
        inside = np.zeros(len(fix), dtype=bool)
        distance = bound[fix]
        if near.any():
            east, north = self._to_local(xyz[fix[near]], zone[near])
            inside[near], distance[near] = self._signed_distance(zone[near], east, north, horizon_m)
        active = self._active(zone, fix, ts)
        return Evaluation(fix, zone, inside, distance, active)

    def _tag_bound(self, tag_idx: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        """Per fix, a lower bound of its distance to every zone of its tag."""
        t = np.maximum(tag_idx, 0)
        return np.linalg.norm(xyz - self._tag_centre[t], axis=1) - self._tag_radius[t]

    def _to_local(self, xyz: np.ndarray, zone: np.ndarray):
        """East and north metres of ECEF points, each in its zone's frame."""
        d = xyz - self._origin[zone]
        east = np.einsum("ij,ij->i", d, self._east[zone])
        north = np.einsum("ij,ij->i", d, self._north[zone])
        return east, north

    def _signed_distance(self, zone, east, north, horizon_m):
        from_centre = np.hypot(east, north)
        distance = from_centre - self.zone_reach[zone]  # exact for circles, a bound otherwise
        near = ~self.zone_circle[zone] & (distance <= horizon_m)
        if near.any():
            to_edge, within = self._polygon_rows(zone[near], east[near], north[near])
            distance[near] = np.where(within, -to_edge, to_edge)
        return distance <= 0.0, distance

    def _polygon_rows(self, zone, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Distance from each point to its polygon's boundary, and whether the point
        is in the polygon (on the boundary counts as in)."""
        shapes, points = self._shapes[zone], shapely.points(x, y)
        to_edge = shapely.distance(shapes, points)  # 0 for a point in the polygon
        inside = to_edge == 0.0
        if inside.any():
            # Few fixes are inside: their boundaries are made for them alone, where
            # keeping one per zone would cost 0.4 KB a polygon for the whole caseload.
            to_edge[inside] = shapely.distance(shapely.boundary(shapes[inside]), points[inside])
        return to_edge, inside

    def _active(self, zone: np.ndarray, fix: np.ndarray, ts: np.ndarray | None) -> np.ndarray:
        sched = self.zone_schedule[zone]
        active = np.ones(len(zone), dtype=bool)
        if ts is None or not (sched >= 0).any():
            return active
        ts = np.asarray(ts, dtype=np.float64)
        ts = np.where(np.isfinite(ts), ts, 0.0)  # such fixes have no pairs anyway
        clocks: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # local time, once per fix
        for i in np.unique(sched[sched >= 0]).tolist():
            schedule = self._schedules[i]
            if schedule.timezone not in clocks:
                clocks[schedule.timezone] = local_clock(ts, schedule.timezone)
            weekday, minute = clocks[schedule.timezone]
            rows = sched == i
            at = fix[rows]
            active[rows] = schedule.active_at(weekday[at], minute[at])
        return active


def _empty() -> Evaluation:
    ints = np.zeros(0, dtype=np.int64)
    return Evaluation(ints, ints, np.zeros(0, bool), np.zeros(0), np.zeros(0, bool))
