"""Case files (DESIGN 3.4): one GeoJSON FeatureCollection per case.

Every refusal names the file, the feature and the field. Messages never quote
zone coordinates or phone numbers: they end up in logs, and victim locations
must not (DESIGN 5).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import shapely
from shapely.geometry import Point, shape

from zones.geodesy import LocalFrame, ecef, to_lonlat
from zones.models import KINDS, Case, Victim, Zone, in_frame
from zones.schedule import ScheduleError, load_timezone, parse_schedule

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Z]{2})?$")
_ZONE_TYPES = ("Polygon", "MultiPolygon", "Point")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class CaseFileError(ValueError):
    """A case file that cannot be loaded; the message names file, feature and field."""

    def __init__(self, file: str, where: str, message: str) -> None:
        self.file, self.where = file, where
        super().__init__(f"{file}: {where}: {message}" if where else f"{file}: {message}")


@dataclass(frozen=True)
class LoadResult:
    cases: tuple[Case, ...]
    errors: tuple[CaseFileError, ...]


def load_cases(path: str | Path, rule_names: Iterable[str] | None = None) -> LoadResult:
    """Load a case file or a folder of them (`*.geojson`, `*.json`).

    A bad file is reported in `errors` and the others still load. A case id
    that appears in two files refuses the second.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".geojson", ".json"))
    elif path.exists():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such case file or folder")
    cases: list[Case] = []
    errors: list[CaseFileError] = []
    seen: dict[str, str] = {}
    for file in files:
        try:
            case = load_case_file(file, rule_names)
        except CaseFileError as exc:
            errors.append(exc)
            continue
        if case.id in seen:
            errors.append(
                CaseFileError(
                    str(file), "case.id", f"case {case.id!r} is already in {seen[case.id]}"
                )
            )
            continue
        seen[case.id] = str(file)
        cases.append(case)
    return LoadResult(tuple(cases), tuple(errors))


def load_case_file(path: str | Path, rule_names: Iterable[str] | None = None) -> Case:
    file = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise CaseFileError(file, "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CaseFileError(file, "", "not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaseFileError(file, "", f"not JSON (line {exc.lineno}, column {exc.colno})") from None
    return parse_case(doc, file, frozenset(rule_names) if rule_names is not None else None)


def parse_case(doc: object, file: str, rule_names: frozenset[str] | None = None) -> Case:
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise CaseFileError(
            file, "", 'not GeoJSON: expected an object with "type": "FeatureCollection"'
        )
    meta = doc.get("case")
    if not isinstance(meta, dict):
        raise CaseFileError(file, "case", 'missing: the foreign member "case" must be an object')
    case_id = _ident(meta.get("id"), file, "case.id")
    tags = _tags(meta, file)
    timezone = _timezone(meta, file)
    victims = _victims(meta.get("victims", []), file)
    rules = _rules(meta.get("rules", {}), file, rule_names)
    features = doc.get("features")
    if not isinstance(features, list):
        raise CaseFileError(file, "features", "must be a list of zone features")
    zones: list[Zone] = []
    for i, feature in enumerate(features):
        zone = _zone(feature, i, case_id, timezone, victims, file)
        if any(z.zone_id == zone.zone_id for z in zones):
            raise CaseFileError(
                file,
                f"feature {i} (zone {zone.zone_id!r})",
                "properties.zone: duplicate zone id in this case",
            )
        zones.append(zone)
    language, texts = _texts(meta, file)
    return Case(
        case_id,
        tags,
        sys.intern(timezone),
        victims,
        tuple(zones),
        _mapping(rules),
        file,
        sys.intern(language),
        _mapping(texts),
    )


_EMPTY: Mapping = MappingProxyType({})


def _mapping(values: dict) -> Mapping:
    # Most cases override nothing: they share one empty mapping.
    return MappingProxyType(values) if values else _EMPTY


def _ident(value: object, file: str, where: str) -> str:
    """A case, zone, victim, tag or device id: it becomes an MQTT topic level, a record
    chain name and a URL segment, so only `[A-Za-z0-9._-]{1,64}` (DESIGN 3.4)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise CaseFileError(
            file, where, f"{shown} is not an id: 1 to 64 of the characters A-Z a-z 0-9 . _ -"
        )
    return value


def _tags(meta: dict, file: str) -> tuple[str, ...]:
    tags = meta.get("tags")
    if not isinstance(tags, list) or not tags:
        raise CaseFileError(file, "case.tags", "a case needs at least one tag id")
    for i, tag in enumerate(tags):
        _ident(tag, file, f"case.tags[{i}]")
    if len(set(tags)) != len(tags):
        raise CaseFileError(file, "case.tags", "a tag id is listed twice")
    return tuple(tags)


def _timezone(meta: dict, file: str) -> str:
    name = meta.get("timezone")
    try:
        load_timezone(name)  # type: ignore[arg-type]
    except ScheduleError as exc:
        raise CaseFileError(file, "case.timezone", str(exc)) from None
    return name  # type: ignore[return-value]


def _victims(raw: object, file: str) -> tuple[Victim, ...]:
    if not isinstance(raw, list):
        raise CaseFileError(file, "case.victims", "must be a list of victim objects")
    victims = []
    for i, v in enumerate(raw):
        where = f"case.victims[{i}]"
        if not isinstance(v, dict):
            raise CaseFileError(file, where, "must be an object")
        victim_id = _ident(v.get("id"), file, f"{where}.id")
        phone = v.get("phone")
        if phone is not None and (not isinstance(phone, str) or not _E164.match(phone)):
            raise CaseFileError(
                file, f"{where}.phone", "must be an E.164 number (+, country code, number)"
            )
        device = v.get("device")
        if device is not None:
            _ident(device, file, f"{where}.device")
        radius = _optional_metres(
            v, "mobile_radius_m", file, f"{where}.mobile_radius_m", positive=True
        )
        victims.append(Victim(sys.intern(victim_id), phone, device, radius))
    if len({v.id for v in victims}) != len(victims):
        raise CaseFileError(file, "case.victims", "a victim id is listed twice")
    return tuple(victims)


def _rules(raw: object, file: str, rule_names: frozenset[str] | None) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise CaseFileError(file, "case.rules", "must be an object of rule overrides")
    for key, value in raw.items():
        where = f"case.rules.{key}"
        if rule_names is not None and key not in rule_names:
            raise CaseFileError(file, where, "unknown rule name")
        if not _is_number(value) or value < 0:
            raise CaseFileError(file, where, "must be a number >= 0")
    return dict(raw)


def _texts(meta: dict, file: str) -> tuple[str, dict[str, str]]:
    """`case.language` (e.g. "en", "es") and `case.texts`, overrides of the victim's texts
    by key; the keys and placeholders are checked by the notifier that uses them."""
    language = meta.get("language", "en")
    if not isinstance(language, str) or not _LANGUAGE.match(language):
        raise CaseFileError(file, "case.language", 'must be a language code such as "en" or "es"')
    texts = meta.get("texts", {})
    if not isinstance(texts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in texts.items()
    ):
        raise CaseFileError(file, "case.texts", "must be an object of non-empty text templates")
    return language, dict(texts)


def _zone(
    feature: object, i: int, case_id: str, timezone: str, victims: tuple[Victim, ...], file: str
) -> Zone:
    where = f"feature {i}"
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise CaseFileError(file, where, 'not a GeoJSON Feature ("type": "Feature")')
    props = feature.get("properties")
    if not isinstance(props, dict):
        raise CaseFileError(file, where, "properties: must be an object")
    zone_id = _ident(props.get("zone"), file, f"{where}.properties.zone")
    where = f"feature {i} (zone {zone_id!r})"
    kind = props.get("kind")
    if kind not in KINDS:
        raise CaseFileError(file, f"{where}.properties.kind", f"must be one of {', '.join(KINDS)}")
    victim = props.get("victim")
    if victim is not None and victim not in {v.id for v in victims}:
        raise CaseFileError(file, f"{where}.properties.victim", "names no victim of this case")
    warn_m = _optional_metres(props, "warn_m", file, f"{where}.properties.warn_m", positive=False)
    schedule = None
    if "schedule" in props:
        try:
            schedule = parse_schedule(props["schedule"], timezone)
        except ScheduleError as exc:
            raise CaseFileError(file, f"{where}.properties.schedule", str(exc)) from None
    geometry, frame, radius = _geometry(feature.get("geometry"), props, file, where)
    drawn = shapely.to_wkb(geometry)
    # Zone ids and victim ids repeat across a caseload ("home", "V-01"): one copy each.
    zone_id, kind = sys.intern(zone_id), sys.intern(kind)
    victim = victim if victim is None else sys.intern(victim)
    return Zone(case_id, zone_id, kind, drawn, frame, radius, warn_m, victim, schedule)


def _geometry(raw: object, props: dict, file: str, where: str):
    if not isinstance(raw, dict) or raw.get("type") not in _ZONE_TYPES:
        raise CaseFileError(file, f"{where}.geometry", f"must be a {', '.join(_ZONE_TYPES)}")
    kind = raw["type"]
    coords = raw.get("coordinates")
    if kind == "Point":
        return _circle(coords, props, file, where)
    if "radius_m" in props:
        raise CaseFileError(file, f"{where}.properties.radius_m", "only a Point zone has a radius")
    polygons = [coords] if kind == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        raise CaseFileError(file, f"{where}.geometry.coordinates", f"a {kind} needs coordinates")
    for p, rings in enumerate(polygons):
        label = "" if kind == "Polygon" else f"polygon {p}, "
        _check_rings(rings, file, f"{where}.geometry.coordinates", label)
    geometry = shape(raw)
    frame = LocalFrame.at(*_centre(geometry))
    # Valid in metres, where the core measures it (lon/lat would distort it).
    local = in_frame(geometry, frame)
    if not local.is_valid:
        reason = shapely.is_valid_reason(local).split("[")[0]
        raise CaseFileError(file, f"{where}.geometry", f"invalid polygon: {reason}")
    return geometry, frame, None


def _circle(coords: object, props: dict, file: str, where: str):
    _check_position(coords, file, f"{where}.geometry.coordinates", "")
    radius = props.get("radius_m")
    if not _is_number(radius) or radius <= 0:
        raise CaseFileError(
            file, f"{where}.properties.radius_m", "a Point zone needs a positive radius_m (metres)"
        )
    lon, lat = float(coords[0]), float(coords[1])  # type: ignore[index]
    return Point(lon, lat), LocalFrame.at(lon, lat), float(radius)


def _check_rings(rings: object, file: str, where: str, label: str) -> None:
    if not isinstance(rings, list) or not rings:
        raise CaseFileError(file, where, f"{label}a polygon needs at least an outer ring")
    for r, ring in enumerate(rings):
        name = f"{label}ring {r}"
        if not isinstance(ring, list) or len(ring) < 4:
            raise CaseFileError(file, where, f"{name}: a ring needs at least 4 positions")
        for k, position in enumerate(ring):
            _check_position(position, file, where, f"{name}, position {k}: ")
        if list(ring[0][:2]) != list(ring[-1][:2]):
            raise CaseFileError(file, where, f"{name}: ring is not closed (first position != last)")


def _check_position(position: object, file: str, where: str, label: str) -> None:
    if (
        not isinstance(position, list)
        or len(position) < 2
        or not all(_is_number(c) for c in position[:2])
    ):
        raise CaseFileError(file, where, f"{label}a position must be [lon, lat] numbers")
    lon, lat = position[0], position[1]
    if not -90 <= lat <= 90:
        raise CaseFileError(
            file, where, f"{label}latitude outside -90..90 (are lon and lat swapped?)"
        )
    if not -180 <= lon <= 180:
        raise CaseFileError(file, where, f"{label}longitude outside -180..180")


def _centre(geometry) -> tuple[float, float]:
    """A point near the middle of the zone, through ECEF so the antimeridian is no seam."""
    coords = shapely.get_coordinates(geometry)
    return to_lonlat(ecef(coords[:, 0], coords[:, 1]).mean(axis=0))


def _optional_metres(obj: dict, key: str, file: str, where: str, positive: bool) -> float | None:
    if key not in obj:
        return None
    value = obj[key]
    if not _is_number(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise CaseFileError(file, where, f"must be a number of metres {bound}")
    return float(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
