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
  radius), never by shapely;
- a polygon pair farther than `horizon_m` from its zone's reach circle is
  outside for certain, and its distance is reported as the lower bound
  `distance to centre - reach` (which is > horizon_m); only the pairs within
  the horizon go to shapely, in one vectorised call per question.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
        get = self._tag_index.get
        return np.fromiter((get(t, -1) for t in tags), dtype=np.int64)

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
        self.zone_reach = np.array([z.reach_m for z in zones], dtype=np.float64)
        # Every zone's frame at once: one pyproj call, not one per zone.
        lon = np.array([z.frame.lon for z in zones], dtype=np.float64)
        lat = np.array([z.frame.lat for z in zones], dtype=np.float64)
        rotation = enu_rotations(lon, lat).reshape(-1, 2, 3)
        self._origin = ecef(lon, lat).reshape(-1, 3)
        self._east = rotation[:, 0, :]
        self._north = rotation[:, 1, :]
        self._shapes = np.array([z.shape for z in zones], dtype=object)
        # Kept (0.4 KB a polygon): the distance to the boundary is the core's main cost,
        # and taking it from the polygon instead would add a containment test to each.
        self._boundaries = np.array(
            [None if z.shape is None else z.shape.boundary for z in zones], dtype=object
        )
        schedules = sorted({z.schedule for z in zones if z.schedule}, key=repr)
        self._schedules: tuple[Schedule, ...] = tuple(schedules)
        sched_id = {s: i for i, s in enumerate(schedules)}
        self.zone_schedule = np.array(
            [sched_id[z.schedule] if z.schedule else -1 for z in zones], dtype=np.int64
        )

    def _index_tags(self) -> None:
        # CSR layout: the zones of tag t are tag_zones[tag_zone_ptr[t]:tag_zone_ptr[t+1]].
        per_tag: list[list[int]] = [[] for _ in self.tags]
        k = 0
        for case in self.cases:
            ids = list(range(k, k + len(case.zones)))
            k += len(case.zones)
            for tag in case.tags:
                per_tag[self._tag_index[tag]].extend(ids)
        counts = np.array([len(z) for z in per_tag], dtype=np.int64)
        self.tag_zone_ptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self.tag_zones = np.array([z for zs in per_tag for z in zs], dtype=np.int64)

    def _bound_tags(self) -> None:
        # A sphere around all of a tag's zones (ECEF): the fix-level prefilter.
        # 3-D distances are chords, never longer than the geodesic, so
        # `|fix - centre| - radius` is a true lower bound of the distance to
        # every zone; 1 m covers the zones' curvature below their tangent plane.
        n = len(self.tags)
        self._tag_centre = np.zeros((n, 3))
        self._tag_radius = np.zeros(n)
        for t in range(n):
            zones = self.tag_zones[self.tag_zone_ptr[t] : self.tag_zone_ptr[t + 1]]
            if len(zones) == 0:
                continue
            centre = self._origin[zones].mean(axis=0)
            spread = np.linalg.norm(self._origin[zones] - centre, axis=1)
            self._tag_centre[t] = centre
            self._tag_radius[t] = float(np.max(spread + self.zone_reach[zones])) + 1.0

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
            east, north = self._to_local(xyz, fix[near], zone[near])
            inside[near], distance[near] = self._signed_distance(zone[near], east, north, horizon_m)
        active = self._active(zone, fix, ts)
        return Evaluation(fix, zone, inside, distance, active)

    def _tag_bound(self, tag_idx: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        """Per fix, a lower bound of its distance to every zone of its tag."""
        t = np.maximum(tag_idx, 0)
        return np.linalg.norm(xyz - self._tag_centre[t], axis=1) - self._tag_radius[t]

    def _to_local(self, xyz: np.ndarray, fix: np.ndarray, zone: np.ndarray):
        d = xyz[fix] - self._origin[zone]
        east = np.einsum("ij,ij->i", d, self._east[zone])
        north = np.einsum("ij,ij->i", d, self._north[zone])
        return east, north

    def _signed_distance(self, zone, east, north, horizon_m):
        from_centre = np.hypot(east, north)
        distance = from_centre - self.zone_reach[zone]  # exact for circles, a bound otherwise
        near = ~self.zone_circle[zone] & (distance <= horizon_m)
        if near.any():
            z, x, y = zone[near], east[near], north[near]
            to_edge = shapely.distance(self._boundaries[z], shapely.points(x, y))
            # Outside the reach circle a point is outside the polygon: only the
            # points within it need the containment test.
            within = np.zeros(len(z), dtype=bool)
            maybe = distance[near] <= 0.0
            if maybe.any():
                within[maybe] = shapely.intersects_xy(self._shapes[z[maybe]], x[maybe], y[maybe])
            distance[near] = np.where(within, -to_edge, to_edge)
        return distance <= 0.0, distance

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
