"""GeoJSON for the dashboard map: a tag's track and a case's zones with warning rings.

Zones keep their geometry as drawn (WGS84 lon/lat). GeoJSON has no circle, so a circle
zone is its centre Point with `radius_m` in its properties, and its warning ring a Point
with the ring's outer radius; the page draws both in its metric projection. The warning
ring of a polygon zone is the zone buffered by warn_m in the zone's own metric frame,
turned back into lon/lat here, so the page needs no geometry library.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import mapping

from zones import EXCLUSION, Case, Zone


@cache
def _from_ecef() -> Transformer:
    return Transformer.from_crs("EPSG:4978", "EPSG:4326", always_xy=True)


def track_geojson(tag: str, fixes: list[dict]) -> dict:
    """Accepted fixes (record bodies) as Point features, oldest first; heartbeats left out."""
    features = []
    for fix in fixes:
        lon, lat = fix.get("lon"), fix.get("lat")
        if not isinstance(lon, int | float) or not isinstance(lat, int | float):
            continue
        props = {k: v for k, v in fix.items() if k not in ("lat", "lon")}
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "tag": tag, "features": features}


def zones_geojson(case: Case, default_warn_m: float) -> dict:
    features = []
    for zone in case.zones:
        features.append(_zone_feature(zone, "zone", mapping(zone.geometry), zone.radius_m))
        if zone.kind == EXCLUSION:
            warn = (
                zone.warn_m if zone.warn_m is not None else case.rules.get("warn_m", default_warn_m)
            )
            if warn > 0:
                features.append(_warn_ring(zone, float(warn)))
    return {"type": "FeatureCollection", "case": case.id, "features": features}


def _zone_feature(zone: Zone, role: str, geometry: dict, radius: float | None) -> dict:
    props = {
        "zone": zone.zone_id,
        "kind": zone.kind,
        "role": role,
        "radius_m": radius,
        "warn_m": zone.warn_m,
        "victim": zone.victim,
        "scheduled": zone.schedule is not None,
    }
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _warn_ring(zone: Zone, warn_m: float) -> dict:
    if zone.is_circle:
        feature = _zone_feature(zone, "warn", mapping(zone.geometry), zone.radius_m + warn_m)
    else:
        ring = shapely.transform(
            zone.shape.buffer(warn_m, quad_segs=16), lambda xy: _to_lonlat(zone, xy)
        )
        feature = _zone_feature(zone, "warn", mapping(ring), None)
    feature["properties"]["warn_m"] = warn_m
    return feature


def _to_lonlat(zone: Zone, east_north: np.ndarray) -> np.ndarray:
    """Local east/north metres of the zone's frame back to lon/lat (inverse of project)."""
    xyz = zone.frame.origin + east_north @ zone.frame.rotation
    lon, lat, _ = _from_ecef().transform(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    return np.column_stack((lon, lat))
