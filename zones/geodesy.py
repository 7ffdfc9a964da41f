"""Metric coordinates for zone tests, exact enough anywhere on Earth.

Every zone gets its own local east/north frame: the topocentric (ENU) frame of
the WGS84 ellipsoid at the zone's centre. Fixes go to Earth-centred Cartesian
coordinates (ECEF) with one pyproj call per batch, and then into each zone's
frame by a rotation, which numpy does for all (fix, zone) pairs at once.

Why this frame: it has no seams (the antimeridian and high latitudes are
nothing special in ECEF), and the horizontal distance in it differs from the
geodesic distance by about theta^2/8 (theta = distance / Earth radius), that is
1.2e-6 at 20 km, far below what GPS can resolve. A frame per zone rather than
per case keeps that true when one case's zones are far apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from pyproj import Geod, Transformer

WGS84 = Geod(ellps="WGS84")


@cache
def _to_ecef() -> Transformer:
    # Built once: creating a Transformer is expensive, calling it on arrays is cheap.
    return Transformer.from_crs("EPSG:4326", "EPSG:4978", always_xy=True)


def to_lonlat(xyz: np.ndarray) -> tuple[float, float]:
    """Geodetic lon/lat of the point of the ellipsoid below an ECEF position."""
    lon, lat, _ = _to_ecef().transform(*xyz, direction="INVERSE")
    return float(lon), float(lat)


def ecef(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """ECEF coordinates (n, 3) in metres of points on the ellipsoid surface."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    x, y, z = _to_ecef().transform(lon, lat, np.zeros_like(lon))
    return np.column_stack((x, y, z))


@dataclass(frozen=True, slots=True)
class LocalFrame:
    """The topocentric east/north frame at one point of the ellipsoid.

    Only the centre is stored: a caseload holds one frame per zone, and the origin
    and rotation arrays would cost more than the zone itself. ZoneSet computes them
    for all zones at once; `origin` and `rotation` compute one frame's on demand.
    """

    lon: float
    lat: float

    @classmethod
    def at(cls, lon: float, lat: float) -> LocalFrame:
        return cls(float(lon), float(lat))

    @property
    def origin(self) -> np.ndarray:
        """ECEF of the centre, (3,)."""
        return ecef(np.array([self.lon]), np.array([self.lat]))[0]

    @property
    def rotation(self) -> np.ndarray:
        """Rows: the east and north unit vectors in ECEF, (2, 3)."""
        return enu_rotations(np.array([self.lon]), np.array([self.lat]))[0]

    def project(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """East and north metres of lon/lat points in this frame."""
        local = (ecef(lon, lat) - self.origin) @ self.rotation.T
        return local[:, 0], local[:, 1]


def enu_rotations(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """East and north unit vectors in ECEF at each lon/lat, (n, 2, 3)."""
    lam, phi = np.radians(lon), np.radians(lat)
    east = np.stack((-np.sin(lam), np.cos(lam), np.zeros_like(lam)), axis=-1)
    north = np.stack((-np.sin(phi) * np.cos(lam), -np.sin(phi) * np.sin(lam), np.cos(phi)), axis=-1)
    return np.stack((east, north), axis=1)


def geodesic_distance_m(
    lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray
) -> np.ndarray:
    """Geodesic distance on WGS84 between point arrays (vectorised, Karney's algorithm)."""
    _, _, dist = WGS84.inv(
        np.asarray(lon1, dtype=np.float64),
        np.asarray(lat1, dtype=np.float64),
        np.asarray(lon2, dtype=np.float64),
        np.asarray(lat2, dtype=np.float64),
    )
    return np.asarray(dist, dtype=np.float64)
