"""Benchmark (not a test): `record near` on a generated year, indexed beside a full scan.

    .venv/bin/python tests/bench_near.py [--tags 1000] [--days 365] [--per-day 6]
        [--url sqlite:///path/record.db | postgresql://...] [--keep]

Writes a year of fixes of `--tags` tags through Record.commit (hash chains, the place
index, as the daemon writes them): each tag lives around a home somewhere in a 40 km
square over London and reports `--per-day` fixes a day, wandering up to 6 km from home.
Then it asks the same questions three ways, in this run, and checks they agree:

- indexed: near.find (the place index: grid cells, then the time window, then the
  geodesic distance from the hashed entry bodies of the candidates);
- time first (SQLite only): an index on fix_places (event_ts) made for this comparison,
  the window first, then a latitude/longitude bounding box, then the same distances;
- full scan: every fix entry in the window read from `entries` (no place index at all:
  what a query costs without schema 3), the same geodesic distance.

Each query runs 3 times; the best time is printed. Default database: a SQLite file in a
temporary folder (removed unless --keep). With the default size generation takes about
2 minutes on one core (2.2 million fix entries).
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path

from tagwatch.record import Batch, Entry, Record, near
from tagwatch.record.near import NearQuery

YEAR_START = 1_735_689_600.0  # 2025-01-01T00:00:00Z
CENTRE = (51.5074, -0.1278)
BOX_M = 40_000.0
WANDER_M = 6_000.0
DEG_LAT = 111_200.0


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return (lat + north_m / DEG_LAT,
            lon + east_m / (DEG_LAT * math.cos(math.radians(lat))))


def generate(record: Record, tags: int, days: int, per_day: int, seed: int = 22) -> int:
    rng = random.Random(seed)
    homes = [_offset(*CENTRE, rng.uniform(-BOX_M / 2, BOX_M / 2),
                     rng.uniform(-BOX_M / 2, BOX_M / 2)) for _ in range(tags)]
    step = 86_400.0 / per_day
    written = 0
    for day in range(days):
        entries = []
        for i, home in enumerate(homes):
            tag = f"T-{i:04d}"
            for k in range(per_day):
                ts = YEAR_START + day * 86_400 + k * step + rng.uniform(0, step * 0.9)
                r = WANDER_M * rng.random() ** 2  # mostly near home
                a = rng.uniform(0, 2 * math.pi)
                lat, lon = _offset(*home, r * math.cos(a), r * math.sin(a))
                body = {"tag": tag, "ts": ts, "lat": round(lat, 6), "lon": round(lon, 6),
                        "acc": 8.0, "fix": "gnss", "late": False}
                entries.append(Entry(f"case:C-{i:04d}", "fix", body, tag=tag, event_ts=ts))
        entries.sort(key=lambda e: e.event_ts)
        record.commit(Batch(entries), YEAR_START + (day + 1) * 86_400)
        written += len(entries)
    return written


def full_scan(db, query: NearQuery) -> list[dict]:
    rows = db.query(
        "SELECT tag, chain, event_ts, body FROM entries WHERE kind = 'fix' "
        "AND body IS NOT NULL AND event_ts BETWEEN ? AND ?",
        (query.since, query.until),
    )
    return near.summarise(query, rows)


def time_first(db, query: NearQuery) -> list[dict]:
    dlat = query.radius_m / 110_000.0
    dlon = query.radius_m / (110_000.0 * math.cos(math.radians(abs(query.lat) + dlat)))
    rows = db.query(
        "SELECT p.tag, p.chain, e.event_ts, e.body FROM fix_places p "
        "INDEXED BY fix_places_time JOIN entries e ON e.chain = p.chain AND e.seq = p.seq "
        "WHERE p.event_ts BETWEEN ? AND ? AND p.lat BETWEEN ? AND ? AND p.lon BETWEEN ? AND ? "
        "AND e.kind = 'fix' AND e.body IS NOT NULL",
        (query.since, query.until, query.lat - dlat, query.lat + dlat,
         query.lon - dlon, query.lon + dlon),
    )
    return near.summarise(query, rows)


def best_of(record: Record, fn, query: NearQuery, runs: int = 3) -> tuple[float, list[dict]]:
    best, found = math.inf, []
    for _ in range(runs):
        start = time.perf_counter()
        found = record.read(lambda db: fn(db, query))
        best = min(best, time.perf_counter() - start)
    return best, found


def questions() -> list[tuple[str, NearQuery]]:
    scene = _offset(*CENTRE, 1_200.0, -2_500.0)
    day = YEAR_START + 200 * 86_400  # 2025-07-20
    return [
        ("300 m, 2 hours", NearQuery(*scene, 300.0, day + 20 * 3600, day + 22 * 3600, "b")),
        ("1 km, 1 day", NearQuery(*scene, 1_000.0, day, day + 86_400, "b")),
        ("1 km, 30 days", NearQuery(*scene, 1_000.0, day - 30 * 86_400, day, "b")),
        ("300 m, whole year", NearQuery(*scene, 300.0, YEAR_START,
                                        YEAR_START + 366 * 86_400, "b")),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-day", type=int, default=6)
    parser.add_argument("--url", help="record URL (default: SQLite in a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary record")
    parser.add_argument("--no-generate", action="store_true",
                        help="query the record at --url as it is (made by an earlier --keep)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-near-")
    url = args.url or f"sqlite://{folder}/record.db"
    record = Record.open(url)
    try:
        if not args.no_generate:
            start = time.perf_counter()
            n = generate(record, args.tags, args.days, args.per_day)
            took = time.perf_counter() - start
            print(f"generated {n:,} fix entries ({args.tags} tags, {args.days} days, "
                  f"{args.per_day}/day) in {took:.0f} s into {record.label}")
        sqlite = record.label.startswith("sqlite")
        if sqlite:
            record.read(lambda db: db.script([
                "CREATE INDEX IF NOT EXISTS fix_places_time ON fix_places (event_ts)"]))
        print(f"{'query':<20}{'tags':>6}{'cell index ms':>15}{'time first ms':>15}"
              f"{'full scan ms':>14}{'full/cell':>11}")
        for name, query in questions():
            t_idx, a = best_of(record, near.find, query)
            t_time, b = best_of(record, time_first, query) if sqlite else (math.nan, a)
            t_full, c = best_of(record, full_scan, query)
            assert a == b == c, (name, len(a), len(b), len(c))
            print(f"{name:<20}{len(a):>6}{t_idx * 1e3:>15.1f}{t_time * 1e3:>15.1f}"
                  f"{t_full * 1e3:>14.1f}{t_full / t_idx:>10.0f}x")
    finally:
        record.close()
        if not args.keep and args.url is None:
            for p in Path(folder).iterdir():
                p.unlink()
            Path(folder).rmdir()
        elif args.url is None:
            print(f"kept {url}")


if __name__ == "__main__":
    main()
