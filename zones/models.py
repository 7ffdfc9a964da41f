"""Zone, victim and case models: plain immutable data, built by the case-file loader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
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

    The zone as drawn (WGS84 lon/lat) is kept as WKB only: exact, and a fraction
    of the size of GEOS objects (a caseload holds 100,000 cases). The geometry
    core (ZoneSet) projects all polygons into their zones' frames at once and
    keeps them there; `shape` builds one zone's on demand. A circle has
    `radius_m`, its geodesic radius, and no shape.
    """

    case_id: str
    zone_id: str
    kind: str
    drawn: bytes  # WKB of the GeoJSON geometry in WGS84 lon/lat, as drawn
    frame: LocalFrame
    radius_m: float | None
    warn_m: float | None = None  # None: the rules' warn_m
    victim: str | None = None
    schedule: Schedule | None = None

    @property
    def is_circle(self) -> bool:
        return self.radius_m is not None

    @property
    def shape(self) -> BaseGeometry | None:
        """The polygon in the zone's metric frame (east/north metres around `frame`);
        None for a circle."""
        return None if self.is_circle else in_frame(self.geometry, self.frame)

    @property
    def geometry(self) -> BaseGeometry:
        """The zone as drawn, in WGS84 lon/lat."""
        return shapely.from_wkb(self.drawn)


def in_frame(geometry: BaseGeometry, frame: LocalFrame) -> BaseGeometry:
    """A lon/lat geometry in a frame's east/north metres (2-D)."""
    return shapely.transform(geometry, lambda lonlat: np.column_stack(frame.project(*lonlat.T)))


OWNTRACKS_DEVICE = "owntracks:"  # the engine's device ids of OwnTracks phones start so


@dataclass(frozen=True, slots=True)
class Victim:
    id: str
    phone: str | None = None
    device: str | None = None
    mobile_radius_m: float | None = None  # None: the rules' mobile_radius_m
    owntracks: str | None = None  # "USER/DEVICE" of the victim's OwnTracks app
    notify_degraded: bool = False  # SMS when protection is degraded / restored (opted in)

    @property
    def phone_device(self) -> str | None:
        """The engine's id of the victim's own device: `device`, or for an OwnTracks phone
        "owntracks:USER/DEVICE" (no id can hold ':', so the two never collide)."""
        if self.device is not None:
            return self.device
        return None if self.owntracks is None else f"{OWNTRACKS_DEVICE}{self.owntracks}"


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
