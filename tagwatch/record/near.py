"""Crime-scene correlation: which tags had a recorded fix within R metres of a point in a
time window (DESIGN 3.5 `tagwatch record near`, 3.8 `GET /api/near`).

The place index. Every fix entry with a position gets a row in `fix_places` (schema 3,
written in the same transaction as the entry): its chain and seq, tag, event_ts, lat, lon
and `cell`, the number of the 0.02 x 0.02 degree grid square it lies in (about 2.2 km
north-south, 1.4 km east-west in London). The index `fix_places_near (cell, event_ts,
lat, lon)` answers "these squares, this window, this box" with one index seek per square,
and only the fixes inside the bounding box are looked up, so a query costs what lies near
the point in the window, not what the record holds. The table is mutable
state outside the chain, like `alert_latest`: a retention purge empties a purged fix's
place (lat, lon and cell set to NULL) with its body.

The answer comes from the chain, not from the index: each candidate's entry body (the
hashed fix) is read and its geodesic distance (WGS84) computed from it. An altered index
can hide a fix from a query but never invent one; `record verify` vouches for the bodies.

Who asked, when, why and with which parameters is recorded before the answer is given
(`audit_entries`): on the chain `audit` (every query, hits or none), and on the chain of
each case the answer names (so the case's own record, and its export, show that its tag
was searched for). A search of where people were is itself sensitive.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
from pyproj import Geod

from tagwatch.record.db import Db
from tagwatch.record.model import Entry, RecordError

AUDIT_CHAIN = "audit"
QUERY_KIND = "near_query"
MAX_RADIUS_M = 25_000.0  # a scene, not a region: larger searches are refused
MAX_REASON_CHARS = 2_000
CELL_PER_DEG = 50  # cells of 1/50 degree
_LON_CELLS = 360 * CELL_PER_DEG + 1
_MAX_CELLS = 4_000  # beyond (near a pole): the time window alone selects
_GEOD = Geod(ellps="WGS84")

# Schema 3's backfill computes `cell` in SQL with exactly this arithmetic (doubles both).
CELL_SQL = {
    "sqlite": "CAST((({lat}) + 90.0) * 50.0 AS INTEGER) * 18001 "
    "+ CAST((({lon}) + 180.0) * 50.0 AS INTEGER)",
    "postgresql": "floor((({lat}) + 90.0) * 50.0)::bigint * 18001 "
    "+ floor((({lon}) + 180.0) * 50.0)::bigint",
}
PLACE_COLUMNS = "chain, seq, tag, event_ts, lat, lon, cell"


class NearRefused(RecordError):
    """Bad parameters of a near query (the message names the parameter)."""


@dataclass(frozen=True)
class NearQuery:
    lat: float
    lon: float
    radius_m: float
    since: float
    until: float
    reason: str

    def check(self) -> NearQuery:
        """self, or NearRefused naming the parameter that is wrong."""
        for name in ("lat", "lon", "radius_m", "since", "until"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise NearRefused(f"{name}: not a number: {value!r}")
            if not math.isfinite(value):
                raise NearRefused(f"{name}: not a finite number: {value!r}")
        if not -90.0 <= self.lat <= 90.0:
            raise NearRefused(f"lat {self.lat!r}: must be -90..90")
        if not -180.0 <= self.lon <= 180.0:
            raise NearRefused(f"lon {self.lon!r}: must be -180..180")
        if not 0.0 < self.radius_m <= MAX_RADIUS_M:
            raise NearRefused(
                f"radius {self.radius_m!r} m: must be above 0 and at most {MAX_RADIUS_M:g} m"
            )
        if self.since > self.until:
            raise NearRefused("since is after until")
        reason = self.reason.strip() if isinstance(self.reason, str) else ""
        if not reason:
            raise NearRefused("reason: required (why this search is made; it is recorded)")
        if len(reason) > MAX_REASON_CHARS:
            raise NearRefused(f"reason: {len(reason)} characters; at most {MAX_REASON_CHARS}")
        return self

    def params(self) -> dict:
        from tagwatch.wire import rfc3339

        return {
            "lat": self.lat,
            "lon": self.lon,
            "radius_m": self.radius_m,
            "since": rfc3339(self.since),
            "until": rfc3339(self.until),
        }


def cell_of(lat: float, lon: float) -> int:
    return math.floor((lat + 90.0) * 50.0) * 18001 + math.floor((lon + 180.0) * 50.0)


def place_rows(rows: list[tuple], entries: list[Entry]) -> list[tuple]:
    """fix_places rows for the fix entries among rows (chain.append_rows' tuples, in the
    order of `entries`) that carry a position, sorted by the table's key (chain, seq).

    This runs once per fix in every commit, so it is kept lean: append_rows has already
    encoded each body as canonical JSON, which refuses a NaN or an infinity, so a
    position that is an int or a float is a finite number here. Sorted, the rows of one
    chain go into the key's B-tree (and mostly the same cell of fix_places_near) one
    after another instead of at a thousand places in turn: the same rows, written with
    fewer pages touched (2,000-row commits alone: 12 -> 9 us of CPU a row)."""
    out = []
    for row, entry in zip(rows, entries, strict=True):
        if entry.kind != "fix" or row[4] is None:
            continue
        body = entry.body
        lat, lon = body.get("lat"), body.get("lon")
        if type(lat) in _NUMBER and type(lon) in _NUMBER:  # bool is not: as _number
            out.append((row[0], row[1], row[3], row[4], lat, lon, cell_of(lat, lon)))
    out.sort(key=_KEY)
    return out


_NUMBER = (int, float)
_KEY = itemgetter(0, 1)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def cells(query: NearQuery) -> list[int] | None:
    """Every grid cell the circle can touch (one cell of margin all round), or None when
    that is too many to list (a circle reaching a pole)."""
    dlat = query.radius_m / 110_000.0  # a degree of latitude is at least 110.57 km
    top = min(90.0, abs(query.lat) + dlat)
    if top >= 89.0:
        return None
    dlon = query.radius_m / (110_000.0 * math.cos(math.radians(top)))
    lat_lo = math.floor((max(-90.0, query.lat - dlat) + 90.0) * 50.0) - 1
    lat_hi = math.floor((min(90.0, query.lat + dlat) + 90.0) * 50.0) + 1
    lon_lo = math.floor((query.lon - dlon + 180.0) * 50.0) - 1
    lon_hi = math.floor((query.lon + dlon + 180.0) * 50.0) + 1
    n = (lat_hi - lat_lo + 1) * (lon_hi - lon_lo + 1)
    if n > _MAX_CELLS or lon_hi - lon_lo + 1 >= _LON_CELLS - 1:
        return None
    found = set()
    for row in range(max(0, lat_lo), lat_hi + 1):
        for col in range(lon_lo, lon_hi + 1):
            # across the antimeridian a column wraps; 180 and -180 both exist as cells
            for wrapped in {col % (_LON_CELLS - 1), col}:
                if 0 <= wrapped < _LON_CELLS:
                    found.add(row * 18001 + wrapped)
    return sorted(found)


def box(query: NearQuery) -> tuple[float, float, float, float] | None:
    """(south, north, west, east) degrees around the circle, with margin; None where the
    box would reach a pole or cross the antimeridian (the cells alone select there)."""
    dlat = query.radius_m / 110_000.0
    top = abs(query.lat) + dlat
    if top >= 89.0:
        return None
    dlon = query.radius_m / (110_000.0 * math.cos(math.radians(top)))
    west, east = query.lon - dlon, query.lon + dlon
    if west < -180.0 or east > 180.0:
        return None
    return query.lat - dlat, query.lat + dlat, west, east


def candidates_sql(query: NearQuery, use_cells: bool = True) -> tuple[str, list]:
    """The SELECT of candidate fixes (tag, chain, event_ts, body) for the query: the grid
    cells the circle touches, the window, the bounding box (all from the index), then the
    entries of what is left."""
    where = ["p.event_ts BETWEEN ? AND ?", "p.cell IS NOT NULL"]
    params = [query.since, query.until]
    listed = cells(query) if use_cells else None
    if listed is not None:
        where.insert(0, f"p.cell IN ({','.join('?' * len(listed))})")
        params = [*listed, *params]
    bounds = box(query)
    if bounds is not None:
        where += ["p.lat BETWEEN ? AND ?", "p.lon BETWEEN ? AND ?"]
        params += list(bounds)
    sql = (
        "SELECT p.tag, p.chain, e.event_ts, e.body FROM fix_places p "
        "JOIN entries e ON e.chain = p.chain AND e.seq = p.seq "
        f"WHERE {' AND '.join(where)} AND e.kind = 'fix' AND e.body IS NOT NULL"
    )
    return sql, params


def find(db: Db, query: NearQuery, use_cells: bool = True) -> list[dict]:
    """The answer, one dict per tag and case, sorted by first_ts, tag, case."""
    sql, params = candidates_sql(query, use_cells)
    return summarise(query, db.query(sql, params))


def summarise(query: NearQuery, rows: list[tuple]) -> list[dict]:
    """rows (tag, chain, event_ts, body JSON) -> one dict per (tag, case) within radius."""
    keys, stamps, lats, lons = [], [], [], []
    for tag, chain, event_ts, body in rows:
        fix = json.loads(body)
        lat, lon = fix.get("lat"), fix.get("lon")
        if not (_number(lat) and _number(lon)):
            continue
        keys.append((tag, chain))
        stamps.append(float(event_ts))
        lats.append(lat)
        lons.append(lon)
    if not keys:
        return []
    n = len(keys)
    _, _, dist = _GEOD.inv(
        np.full(n, query.lon), np.full(n, query.lat), np.asarray(lons), np.asarray(lats)
    )
    groups: dict[tuple[str, str], dict] = {}
    for key, ts, d in zip(keys, stamps, dist, strict=True):
        if d > query.radius_m:
            continue
        found = groups.get(key)
        if found is None:
            groups[key] = {"first": ts, "last": ts, "min": d, "fixes": 1}
        else:
            found["first"] = min(found["first"], ts)
            found["last"] = max(found["last"], ts)
            found["min"] = min(found["min"], d)
            found["fixes"] += 1
    return [
        _result(tag, chain, g)
        for (tag, chain), g in sorted(groups.items(), key=lambda item: (item[1]["first"], item[0]))
    ]


def _result(tag: str, chain: str, g: dict) -> dict:
    from tagwatch.wire import rfc3339

    return {
        "tag": tag,
        "case": chain.removeprefix("case:"),
        "first_ts": rfc3339(g["first"]),
        "last_ts": rfc3339(g["last"]),
        "min_distance_m": round(float(g["min"]), 1),
        "fixes": g["fixes"],
    }


def audit_entries(
    query: NearQuery, results: list[dict], who: str, via: str, now: float
) -> list[Entry]:
    """What records the query: one entry on the audit chain, one on each returned case's
    chain (naming only that case's tags)."""
    from tagwatch.wire import rfc3339

    base = {
        "query": "near",
        "by": who,
        "via": via,
        "at": rfc3339(now),
        "reason": query.reason.strip(),
        "params": query.params(),
    }
    hits = [{"tag": r["tag"], "case": r["case"]} for r in results]
    entries = [Entry(AUDIT_CHAIN, QUERY_KIND, {**base, "results": hits}, event_ts=now)]
    for case in sorted({r["case"] for r in results}):
        mine = [h for h in hits if h["case"] == case]
        entries.append(Entry(f"case:{case}", QUERY_KIND, {**base, "results": mine}, event_ts=now))
    return entries
