"""Movement models: where a wearer truly is at a time (ground truth, no GPS error).

Every model is a pure function of time: `position(t)` with `t` in seconds since
the model's segment began; randomness comes only from a seeded numpy Generator
at construction. A `Track` chains segments over scenario time; each segment
starts where the previous one was at that moment, so a script reads like a day
("stand at home, then walk to work, then loiter near the school").
Distances and bearings are geodesic (pyproj.Geod, WGS84).
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pyproj import Geod

from tagwatch.wire import parse_rfc3339

GEOD = Geod(ellps="WGS84")
LonLat = tuple[float, float]
SPEEDS_MPS = {"walk": 1.4, "cycle": 4.5, "drive": 11.0}


class Movement(Protocol):
    def position(self, t: float) -> LonLat: ...


def offset(origin: LonLat, bearing_deg: float, distance_m: float) -> LonLat:
    lon, lat, _ = GEOD.fwd(origin[0], origin[1], bearing_deg, distance_m)
    return float(lon), float(lat)


def distance_m(a: LonLat, b: LonLat) -> float:
    return float(GEOD.inv(a[0], a[1], b[0], b[1])[2])


@dataclass(frozen=True)
class Stationary:
    point: LonLat

    def position(self, t: float) -> LonLat:
        return self.point


class Route:
    """Along waypoints at a constant speed; stays at the last waypoint once there."""

    def __init__(self, waypoints: Sequence[LonLat], speed_mps: float, loop: bool = False) -> None:
        if len(waypoints) < 2:
            raise ValueError("a route needs at least 2 waypoints")
        if speed_mps <= 0:
            raise ValueError(f"speed_mps {speed_mps!r} must be > 0")
        pts = [tuple(map(float, p)) for p in waypoints]
        if loop:
            pts.append(pts[0])
        self.points = pts
        self.speed = speed_mps
        self.loop = loop
        self.azimuths: list[float] = []
        self.cumulative = [0.0]
        for a, b in itertools.pairwise(pts):
            az, _, dist = GEOD.inv(a[0], a[1], b[0], b[1])
            self.azimuths.append(float(az))
            self.cumulative.append(self.cumulative[-1] + float(dist))

    @property
    def length_m(self) -> float:
        return self.cumulative[-1]

    def position(self, t: float) -> LonLat:
        travelled = max(0.0, t) * self.speed
        if self.loop and self.length_m > 0:
            travelled %= self.length_m
        if travelled >= self.length_m:
            return self.points[-1]
        leg = bisect.bisect_right(self.cumulative, travelled) - 1
        return offset(self.points[leg], self.azimuths[leg], travelled - self.cumulative[leg])


class Approach:
    """Straight at a target at a given speed, stopping `stop_m` short of it."""

    def __init__(self, start: LonLat, target: LonLat, speed_mps: float, stop_m: float = 0.0):
        az, _, dist = GEOD.inv(start[0], start[1], target[0], target[1])
        self.start, self.az, self.speed = start, float(az), speed_mps
        self.reach = max(0.0, float(dist) - stop_m)

    def position(self, t: float) -> LonLat:
        return offset(self.start, self.az, min(self.reach, max(0.0, t) * self.speed))


class Loiter:
    """Wandering around a point, never farther than `radius_m`: two seeded Lissajous
    terms per axis, so the path is smooth, bounded and a pure function of time."""

    def __init__(self, center: LonLat, radius_m: float, rng: np.random.Generator,
                 period_s: float = 600.0) -> None:
        self.center, self.radius = center, radius_m
        self.omega = 2 * math.pi / period_s * rng.uniform(0.6, 1.4, size=(2, 2))
        self.phase = rng.uniform(0, 2 * math.pi, size=(2, 2))

    def position(self, t: float) -> LonLat:
        # each axis is the mean of two sines: |east|, |north| <= r / sqrt(2) keeps it in r
        e, n = (float(np.mean(np.sin(self.omega[i] * t + self.phase[i]))) for i in range(2))
        east, north = e * self.radius / math.sqrt(2), n * self.radius / math.sqrt(2)
        return offset(self.center, math.degrees(math.atan2(east, north)), math.hypot(east, north))


class Follow:
    """Where another track was `lag_s` ago: stalking a victim along their route."""

    def __init__(self, leader: Callable[[float], LonLat], segment_start: float, lag_s: float):
        self.leader, self.segment_start, self.lag = leader, segment_start, lag_s

    def position(self, t: float) -> LonLat:
        return self.leader(self.segment_start + t - self.lag)


class Trace:
    """A recorded trace (times relative to its first point), linearly interpolated."""

    def __init__(self, times: Sequence[float], points: Sequence[LonLat]) -> None:
        if not times:
            raise ValueError("a trace needs at least one point")
        order = np.argsort(times, kind="stable")
        t0 = float(times[order[0]])
        self.times = [float(times[i]) - t0 for i in order]
        self.points = [points[i] for i in order]

    def position(self, t: float) -> LonLat:
        i = bisect.bisect_right(self.times, t)
        if i == 0:
            return self.points[0]
        if i == len(self.times):
            return self.points[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        (lon0, lat0), (lon1, lat1) = self.points[i - 1], self.points[i]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return lon0 + f * (lon1 - lon0), lat0 + f * (lat1 - lat0)


def read_trace(path: Path, tag: str | None = None) -> Trace:
    """A CSV (`tag,ts,lat,lon`, header; rows of `tag` only when given) or a GPX file."""
    if path.suffix.lower() == ".gpx":
        return _gpx(path)
    times, points = [], []
    with open(path, newline="", encoding="utf-8") as stream:
        for n, row in enumerate(csv.DictReader(stream), start=2):
            if tag is not None and row.get("tag") != tag:
                continue
            try:
                times.append(_ts(row["ts"]))
                points.append((float(row["lon"]), float(row["lat"])))
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}: line {n}: needs ts, lat, lon ({exc})") from None
    if not times:
        raise ValueError(f"{path}: no trace points" + (f" for tag {tag!r}" if tag else ""))
    return Trace(times, points)


def _ts(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return parse_rfc3339(text.replace("Z", "+00:00"))


def _gpx(path: Path) -> Trace:
    times, points = [], []
    for el in ET.parse(path).iter():
        if el.tag.rsplit("}", 1)[-1] != "trkpt":
            continue
        when = next((c.text for c in el if c.tag.rsplit("}", 1)[-1] == "time"), None)
        if when is None:
            raise ValueError(f"{path}: a trkpt has no <time>")
        times.append(_ts(when.strip()))
        points.append((float(el.attrib["lon"]), float(el.attrib["lat"])))
    if not times:
        raise ValueError(f"{path}: no <trkpt> elements")
    return Trace(times, points)


class Track:
    """Segments over scenario time: (start second, model built from the origin there)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.models: list[Movement] = []

    def add(self, at: float, build: Callable[[LonLat | None], Movement]) -> None:
        if self.starts and at < self.starts[-1]:
            raise ValueError(f"segment at {at} s starts before the previous one")
        origin = self.position(at) if self.models else None
        self.starts.append(at)
        self.models.append(build(origin))

    def position(self, t: float) -> LonLat:
        if not self.models:
            raise ValueError("a track with no movement")
        i = max(0, bisect.bisect_right(self.starts, t) - 1)
        return self.models[i].position(t - self.starts[i])
