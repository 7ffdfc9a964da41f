"""Benchmark (not a test): case record commit rate for batches of fix entries.

    .venv/bin/python tests/bench_record.py [--batches 40] [--size 500] [--tags 200]

Runs on SQLite (a file in a temporary folder) and, when TAGWATCH_TEST_POSTGRES names a
database, on PostgreSQL in a throwaway schema. Prints entries/s for each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

import psycopg

from tagwatch.record import Batch, Entry, Record


def _batches(count: int, size: int, tags: int) -> list[Batch]:
    batches, n = [], 0
    for _ in range(count):
        entries = []
        for _ in range(size):
            tag = f"T-{n % tags:04d}"
            ts = 1_764_324_930.0 + n
            body = {"tag": tag, "ts": ts, "lat": 51.5 + n * 1e-6, "lon": -0.12 - n * 1e-6,
                    "acc": 8.0, "seq": n, "fix": "gnss", "spd": 1.2, "hdg": 270.0,
                    "bat": 88.0, "strap": "ok"}
            entries.append(Entry(f"case:C-{n % tags:04d}", "fix", body, tag=tag, event_ts=ts))
            n += 1
        checkpoints = {f"T-{i:04d}": b"x" * 200 for i in range(min(tags, size))}
        batches.append(Batch(entries, [], checkpoints))
    return batches


def _run(url: str, batches: list[Batch]) -> tuple[float, float]:
    """(commit entries/s, verify entries/s)"""
    record = Record.open(url)
    try:
        record.commit(batches[0], time.time())  # warm-up: creates the chain heads
        start = time.perf_counter()
        for batch in batches[1:]:
            record.commit(batch, time.time())
        elapsed = time.perf_counter() - start
        start = time.perf_counter()
        problems = record.verify()
        checked = time.perf_counter() - start
    finally:
        record.close()
    assert problems == [], problems
    return (sum(len(b.entries) for b in batches[1:]) / elapsed,
            sum(len(b.entries) for b in batches) / checked)


def _postgres(base: str, batches: list[Batch]) -> tuple[float, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            sep = "&" if "?" in base else "?"
            return _run(f"{base}{sep}options=-csearch_path%3D{schema}", batches)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--tags", type=int, default=200)
    args = parser.parse_args()
    batches = _batches(args.batches + 1, args.size, args.tags)
    shape = f"batches of {args.size} fixes over {args.tags} chains"
    with tempfile.TemporaryDirectory() as folder:
        rate, check = _run(f"sqlite://{folder}/bench.db", batches)
    print(f"sqlite      commit {rate:8.0f} entries/s  verify {check:8.0f} entries/s  ({shape})")
    base = os.environ.get("TAGWATCH_TEST_POSTGRES")
    if base:
        rate, check = _postgres(base, batches)
        print(f"postgresql  commit {rate:8.0f} entries/s  verify {check:8.0f} entries/s  "
              f"({shape})")
    else:
        print("postgresql  skipped: TAGWATCH_TEST_POSTGRES is not set")


if __name__ == "__main__":
    main()
