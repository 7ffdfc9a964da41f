"""`tagwatch zones CASES FIXES.csv`: geometry only, one output row per fix and zone.

Input: a CSV with a header and columns tag, ts, lat, lon and optionally acc
(ts as in DESIGN 3.2: RFC 3339 with an offset or Z, or Unix seconds). Output:
`tag,ts,case,zone,kind,inside,distance_m`, rows in input order and, within a
fix, in case-file order. Fixes are evaluated in chunks so memory stays bounded.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from typing import TextIO

import numpy as np

from tagwatch.wire import parse_rfc3339
from zones import ZoneSet

REQUIRED = ("tag", "ts", "lat", "lon")
OUTPUT = ("tag", "ts", "case", "zone", "kind", "inside", "distance_m")
CHUNK = 100_000


class InputError(ValueError):
    """Bad input: the message names the file, row and field."""


def parse_ts(text: str) -> float:
    """A timestamp of DESIGN 3.2: Unix seconds, or RFC 3339 with an offset."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a finite number")
        return value
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither Unix seconds nor RFC 3339 with an offset "
            "(naive timestamps are refused)"
        ) from None


def read_rows(
    stream: TextIO, name: str
) -> Iterator[list[tuple[int, str, str, float, float, float]]]:
    """Chunks of (row number, tag, ts text, ts, lon, lat) from a fixes CSV."""
    reader = csv.DictReader(stream)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{name}: header lacks column(s) {', '.join(missing)}")
    chunk = []
    for row in reader:
        chunk.append(_row(row, reader.line_num, name))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _row(row: dict, line: int, name: str):
    values = {}
    for field in REQUIRED:
        text = row.get(field)
        if text is None or text == "":
            raise InputError(f"{name}: line {line}: {field} is empty")
        values[field] = text
    try:
        ts = parse_ts(values["ts"])
    except ValueError as exc:
        raise InputError(f"{name}: line {line}: ts: {exc}") from None
    lat = _coordinate(values["lat"], 90, "lat", line, name)
    lon = _coordinate(values["lon"], 180, "lon", line, name)
    return line, values["tag"], values["ts"], ts, lon, lat


def _coordinate(text: str, bound: float, field: str, line: int, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{name}: line {line}: {field}: {text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > bound:
        raise InputError(f"{name}: line {line}: {field}: {text!r} is outside -{bound}..{bound}")
    return value


def write_zone_rows(
    zoneset: ZoneSet, stream: TextIO, name: str, out: TextIO
) -> tuple[int, set[str]]:
    """Evaluate every chunk and write the output rows.

    Returns the number of fixes and the tags that belong to no case (they
    have no rows, and the caller says so rather than staying silent).
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(OUTPUT)
    count = 0
    unknown: set[str] = set()
    for chunk in read_rows(stream, name):
        count += len(chunk)
        tags = [r[1] for r in chunk]
        tag_idx = zoneset.tag_indices(tags)
        unknown.update(t for t, i in zip(tags, tag_idx.tolist(), strict=True) if i < 0)
        ev = zoneset.evaluate(
            tag_idx,
            np.array([r[4] for r in chunk]),
            np.array([r[5] for r in chunk]),
            np.array([r[3] for r in chunk]),
        )
        for f, z, inside, dist in zip(
            ev.fix.tolist(),
            ev.zone.tolist(),
            ev.inside.tolist(),
            ev.distance_m.tolist(),
            strict=True,
        ):
            zone = zoneset.zones[z]
            row = chunk[f]
            writer.writerow(
                (
                    row[1],
                    row[2],
                    zone.case_id,
                    zone.zone_id,
                    zone.kind,
                    "true" if inside else "false",
                    f"{dist:.3f}",
                )
            )
    return count, unknown
