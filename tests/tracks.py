"""Helpers to script tracks and cases for the rule tests.

Positions are placed with pyproj.Geod (WGS84 geodesics), so a fix "5 m
inside a 100 m circle" is exactly 95 m from its centre. Noise comes from a
seeded numpy Generator, so every track is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import orjson
from pyproj import Geod

from tagwatch.config import Rules
from tagwatch.engine.alerts import AlertRecord
from tagwatch.pipeline import Inbound, Pipeline, Result
from tagwatch.wire import Topics
from zones import ZoneSet, parse_case

GEOD = Geod(ellps="WGS84")
TOPICS = Topics()
CENTRE = (-0.1275, 51.5073)  # lon, lat of the default zone ("home")
CASE, TAG, VICTIM, DEVICE = "C-1", "T-1", "V-1", "VD-1"


def utc(text: str) -> float:
    """Unix seconds of an RFC 3339 time ("2026-07-06T10:00:00Z")."""
    return datetime.fromisoformat(text).timestamp()


# -- geometry ---------------------------------------------------------------------


def offset(
    origin: tuple[float, float], bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """The point `distance_m` from `origin` along `bearing_deg` (degrees from north)."""
    lon, lat, _ = GEOD.fwd(origin[0], origin[1], bearing_deg, distance_m)
    return float(lon), float(lat)


def at_distance(
    radius_m: float, signed_m: float, bearing_deg: float = 90.0, centre=CENTRE
) -> tuple[float, float]:
    """A point `signed_m` from the boundary of a circle of `radius_m` (negative inside)."""
    return offset(centre, bearing_deg, radius_m + signed_m)


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(GEOD.inv(a[0], a[1], b[0], b[1])[2])


def line(
    origin: tuple[float, float], bearing_deg: float, start_m: float, step_m: float, n: int
) -> list[tuple[float, float]]:
    """`n` points along a bearing from `origin`, at start_m, start_m + step_m, ..."""
    return [offset(origin, bearing_deg, start_m + i * step_m) for i in range(n)]


def times(start: float, interval_s: float, n: int) -> list[float]:
    return [start + i * interval_s for i in range(n)]


def noisy(
    points: Sequence[tuple[float, float]], sigma_m: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Each point moved by isotropic Gaussian noise of `sigma_m` per axis."""
    east = rng.normal(0.0, sigma_m, len(points))
    north = rng.normal(0.0, sigma_m, len(points))
    out = []
    for (lon, lat), e, nn in zip(points, east, north, strict=True):
        bearing = float(np.degrees(np.arctan2(e, nn)))
        out.append(offset((lon, lat), bearing, float(np.hypot(e, nn))))
    return out


# -- fixes and messages ------------------------------------------------------------


def fix(ts: float, pos: tuple[float, float] | None, acc: float = 10.0, **fields) -> dict:
    """A fix object of DESIGN 3.2 (`pos` None: a heartbeat without position)."""
    obj: dict = {"ts": ts, **fields}
    if pos is None:
        obj.setdefault("fix", "none")
    else:
        obj["lon"], obj["lat"], obj["acc"] = round(pos[0], 7), round(pos[1], 7), acc
    return obj


def track(
    points: Iterable[tuple[float, float]], ts: Iterable[float], acc: float = 10.0, seq0: int = 0
) -> list[dict]:
    """Fixes with a running `seq`."""
    return [fix(t, p, acc, seq=seq0 + i) for i, (p, t) in enumerate(zip(points, ts, strict=True))]


def tag_msg(obj: dict | list, tag: str = TAG, received: float | None = None) -> Inbound:
    return Inbound(TOPICS.tag_fix(tag), orjson.dumps(obj), received)


def victim_msg(obj: dict | list, device: str = DEVICE) -> Inbound:
    return Inbound(TOPICS.victim_fix(device), orjson.dumps(obj), None)


# -- cases ---------------------------------------------------------------------------


def circle(
    zone: str,
    centre: tuple[float, float] = CENTRE,
    radius_m: float = 100.0,
    kind: str = "exclusion",
    **props,
) -> dict:
    """A circular zone feature."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": list(centre)},
        "properties": {"zone": zone, "kind": kind, "radius_m": radius_m, **props},
    }


def case_doc(
    features: list[dict],
    case_id: str = CASE,
    tags: Sequence[str] = (TAG,),
    device: str | None = DEVICE,
    rules: dict | None = None,
) -> dict:
    victim: dict = {"id": VICTIM, "phone": "+447700900123"}
    if device:
        victim["device"] = device
    meta = {"id": case_id, "tags": list(tags), "timezone": "Europe/London", "victims": [victim]}
    if rules:
        meta["rules"] = rules
    return {"type": "FeatureCollection", "case": meta, "features": features}


def home_case(**props) -> dict:
    """One case, one tag, one 100 m exclusion circle "home" (warn_m 250 unless given)."""
    return case_doc([circle("home", warn_m=props.pop("warn_m", 250), victim=VICTIM, **props)])


def zoneset(*docs: dict) -> ZoneSet:
    return ZoneSet([parse_case(d, f"{d['case']['id']}.geojson") for d in docs])


def pipeline(*docs: dict, rules: Rules | None = None) -> Pipeline:
    return Pipeline(zoneset(*(docs or (home_case(),))), rules or Rules(), TOPICS, event_clock=True)


# -- running ---------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a scripted run produced, accumulated over its batches."""

    records: list[AlertRecord]  # every record but the protection status ones
    commands: list[tuple[str, bytes]]
    results: list[Result]
    protection: list[AlertRecord] = field(default_factory=list)  # protection.* records

    def of(self, type_: str) -> list[AlertRecord]:
        return [r for r in self.records if r.type == type_]

    def ids(self, type_: str) -> set[str]:
        return {r.id for r in self.of(type_)}

    def summary(self, type_: str | None = None) -> list[tuple]:
        """(type, state, severity, confidence) per record: the shape the tables assert."""
        return [
            (r.type, r.state, r.severity, r.confidence)
            for r in self.records
            if type_ is None or r.type == type_
        ]


def run(
    batches: Iterable[list[Inbound] | Inbound],
    pipe: Pipeline | None = None,
    tick: float | None = None,
) -> Run:
    """Process each batch (a lone message is a batch of one); optionally tick at the end."""
    pipe = pipe or pipeline()
    out = Run([], [], [])
    for batch in batches:
        result = pipe.process(batch if isinstance(batch, list) else [batch])
        _take(out, result.records)
        out.commands += result.commands
        out.results.append(result)
    if tick is not None:
        result = pipe.tick(tick)
        _take(out, result.records)
        out.results.append(result)
    return out


def without_protection(records: list[AlertRecord]) -> list[AlertRecord]:
    """The records of the rules about the tag's whereabouts: the protection status
    records (engine/protection.py) follow every change of a tag's state and have their
    own tests (tests/test_protection.py)."""
    return [r for r in records if not r.type.startswith("protection.")]


def _take(out: Run, records: list[AlertRecord]) -> None:
    for r in records:
        (out.protection if r.type.startswith("protection.") else out.records).append(r)


def one_by_one(fixes: Iterable[dict], tag: str = TAG) -> list[Inbound]:
    return [tag_msg(f, tag) for f in fixes]
