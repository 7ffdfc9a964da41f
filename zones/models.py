"""Zone, victim and case models: plain immutable data, built by the case-file loader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import shapely
from shapely.geometry.base import BaseGeometry

from zones.geodesy import LocalFrame
from zones.schedule import Schedule

EXCLUSION = "exclusion"
INCLUSION = "inclusion"
KINDS = (EXCLUSION, INCLUSION)


@dataclass(frozen=True, eq=False, slots=True)
class Zone:
    """One zone of a case: a polygon (holes allowed), a multipolygon or a circle.

    `shape` is the zone in its own metric frame (east/north metres around
    `frame`); for a circle it is None and `radius_m` is the geodesic radius.
    The zone as drawn (WGS84 lon/lat) is kept as WKB, exact and a third of the
    size of a geometry object: only the dashboard's map reads it.
    `reach_m` is the largest distance from the frame's centre to any point of
    the zone: a fix farther than `reach_m + d` from the centre is more than `d`
    from the zone, which is what makes the cheap prefilter exact.
    """

    case_id: str
    zone_id: str
    kind: str
    drawn: bytes  # WKB of the GeoJSON geometry in WGS84 lon/lat, as drawn
    frame: LocalFrame
    shape: BaseGeometry | None
    radius_m: float | None
    reach_m: float
    warn_m: float | None = None  # None: the rules' warn_m
    victim: str | None = None
    schedule: Schedule | None = None

    @property
    def is_circle(self) -> bool:
        return self.shape is None

    @property
    def geometry(self) -> BaseGeometry:
        """The zone as drawn, in WGS84 lon/lat."""
        return shapely.from_wkb(self.drawn)


@dataclass(frozen=True, slots=True)
class Victim:
    id: str
    phone: str | None = None
    device: str | None = None
    mobile_radius_m: float | None = None  # None: the rules' mobile_radius_m


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    tags: tuple[str, ...]
    timezone: str
    victims: tuple[Victim, ...]
    zones: tuple[Zone, ...]
    rules: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    source: str = ""  # the file it came from
    language: str = "en"  # of the texts sent to the case's victims
    texts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
