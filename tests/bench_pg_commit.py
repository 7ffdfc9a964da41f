"""Benchmark (not a test): where a batch commit's time goes, SQLite beside PostgreSQL.

    TAGWATCH_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test \\
    .venv/bin/python tests/bench_pg_commit.py [--batches 30] [--sync-off] [--profile]

The batches are the daemon's own: `tagwatch bench e2e`'s cases and fixes go through the
daemon's Pipeline and EffectsBuilder (no broker), in two shapes: throughput batches (2,000
fixes far from every zone, the ingest's batch_max) and latency batches (10 fixes at
2,000 fixes/s with batch_wait_ms 5, one tag in ten inside its zone, so alerts, outbox
rows and checkpoints). Each shape is committed to a fresh SQLite file and a fresh
PostgreSQL schema, alternating batch by batch, and the figures are per commit: wall time,
the committing thread's CPU time, database calls (each a round trip, but an executemany in
psycopg's pipeline), and the wall time of each call and of COMMIT. --sync-off measures a
third record with synchronous_commit off (a measurement of the flush only, never a
setting to ship). On a shared machine only the ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import os
import pstats
import sqlite3  # noqa: F401  (the record's SQLite driver, for the reader)
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import msgspec
import psycopg

from tagwatch.bench import e2e
from tagwatch.bench.workload import london_cases
from tagwatch.config import load_config
from tagwatch.daemon.caseset import load_caseset
from tagwatch.daemon.service import Daemon
from tagwatch.ingest.mqtt import Message
from tagwatch.record import Record
from tagwatch.record import db as dbmod

PG = os.environ.get("TAGWATCH_TEST_POSTGRES", "")
CALLS = ("lock_heads", "insert_rows", "upsert_rows", "executemany", "execute", "query",
         "pipeline_commit")


class Counter:
    """Wraps the Db methods of one record: calls and wall time per method, and COMMIT."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()

    def wrap(self, db: dbmod.Db) -> None:
        for name in CALLS:
            fn = getattr(db, name, None)
            if fn is None:
                continue

            def timed(*args, _fn=fn, _name=name, **kw):
                start = time.perf_counter()
                try:
                    return _fn(*args, **kw)
                finally:
                    self.calls[_name] += 1
                    self.seconds[_name] += time.perf_counter() - start

            setattr(db, name, timed)
        transaction = db.transaction

        @contextlib.contextmanager
        def tx(write, _t=transaction, **kw):
            start = time.perf_counter()
            with _t(write, **kw) as inner:
                self.seconds["begin"] += time.perf_counter() - start
                yield inner
                self._mark = time.perf_counter()
            self.seconds["commit"] += time.perf_counter() - self._mark
            self.calls["commit"] += 1

        db.transaction = tx


def _daemon(workdir: Path, record: Record) -> Daemon:
    config = load_config(e2e._config(workdir, "mqtt://127.0.0.1:1", "bench/x/tagwatch/v1", 1), {})
    caseset = load_caseset(workdir / "cases")
    return Daemon(config, record, caseset.zoneset, caseset.cases)


def _messages(prefix: str, pairs) -> list[Message]:
    now = time.time()
    return [Message(f"{prefix}/tags/{tag}/fix", p, 1, i, now) for i, (tag, p) in enumerate(pairs)]


def _latency_pairs(cases, count: int) -> list[tuple[str, bytes]]:
    """The fixes of e2e._paced, 2,000 per second of event time, without a broker."""
    out, now = [], time.time() - count / 2000
    for k in range(count):
        case = cases[k % len(cases)]
        zone = case.zones[0]
        inside = (k // len(cases)) % 2 == 0 and k % 10 == 0
        fix = {"ts": round(now + k / 2000, 6), "lat": zone.frame.lat + (0.0 if inside else 0.1),
               "lon": zone.frame.lon, "acc": 5, "seq": k // len(cases)}
        out.append((case.tags[0], msgspec.json.encode(fix)))
    return out


def batches(workdir: Path, shape: str, count: int):
    """The daemon's Batches for `count` commits of the given shape."""
    cases = london_cases(e2e.TAGS, seed=11)
    record = Record.open(f"sqlite:///{workdir}/scratch-{uuid.uuid4().hex[:6]}.db")
    daemon = _daemon(workdir, record)
    size = 2000 if shape == "throughput" else 10
    # warm-up: every tag seen once (state, chain heads), as in steady state
    pairs = (e2e._payloads(cases, size * (count + 1)) if shape == "throughput"
             else _latency_pairs(cases, 2000 + size * count))
    warm = 2000 if shape == "latency" else size
    out = []
    for start in [0, *range(warm, len(pairs), size)]:
        chunk = pairs[start:start + (warm if start == 0 else size)]
        now = time.time()
        result = daemon.pipeline.process(_messages("bench/x/tagwatch/v1", chunk), raised=now)
        fx = daemon.effects.from_result(result, daemon.pipeline.checkpoints(), now)
        out.append(fx.batch)
    record.close()
    return out


@contextlib.contextmanager
def pg_schema(extra: str = ""):
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}".encode())
    sep = "&" if "?" in PG else "?"
    try:
        yield f"{PG}{sep}options={quote(f'-csearch_path={schema} {extra}'.strip())}"
    finally:
        with psycopg.connect(PG, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def _state_kib(shape_batches) -> float:
    total = sum(len(s) for b in shape_batches for s in b.checkpoints.values())
    return total / len(shape_batches) / 1024


def measure(urls: dict[str, str], shape_batches, profile: str | None) -> None:
    records = {name: Record.open(url) for name, url in urls.items()}
    counters = {name: Counter() for name in urls}
    for name, record in records.items():
        counters[name].wrap(record._db)
        record.commit(shape_batches[0], time.time())  # warm-up: chain heads, plans
        counters[name].calls.clear()
        counters[name].seconds.clear()
    wall = {name: [] for name in urls}
    cpu = {name: [] for name in urls}
    profiler = cProfile.Profile() if profile else None
    for batch in shape_batches[1:]:
        for name, record in records.items():  # alternating: the machine's load hits all
            if profiler and name == profile:
                profiler.enable()
            c0, w0 = time.thread_time(), time.perf_counter()
            record.commit(batch, time.time())
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.thread_time() - c0)
            if profiler and name == profile:
                profiler.disable()
    n = len(shape_batches) - 1
    entries = statistics.mean(len(b.entries) for b in shape_batches[1:])
    points = statistics.mean(len(b.checkpoints) for b in shape_batches[1:])
    outbox = statistics.mean(len(b.outbox) for b in shape_batches[1:])
    print(f"  {n} batches, mean {entries:.0f} entries, {outbox:.1f} outbox rows, "
          f"{points:.0f} checkpoints, {_state_kib(shape_batches[1:]):.0f} KiB of checkpoint state")
    base = statistics.median(wall["sqlite"])
    for name in urls:
        med, p90 = statistics.median(wall[name]), statistics.quantiles(wall[name], n=10)[-1]
        print(f"  {name:<14} commit median {med * 1000:7.2f} ms (x{med / base:.2f} of SQLite)"
              f"  p90 {p90 * 1000:7.2f} ms  thread CPU median "
              f"{statistics.median(cpu[name]) * 1000:7.2f} ms")
        counter = counters[name]
        parts = ", ".join(
            f"{k} {counter.calls[k] / n:.1f}x {counter.seconds[k] / n * 1000:.2f} ms"
            for k in sorted(counter.seconds, key=lambda k: -counter.seconds[k])
        )
        print(f"  {'':<14} per commit: {parts}")
    for record in records.values():
        record.close()
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(14)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--shape", choices=["throughput", "latency", "both"], default="both")
    parser.add_argument("--sync-off", action="store_true")
    parser.add_argument("--profile", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        e2e._write_cases(london_cases(e2e.TAGS, seed=11), workdir / "cases")
        shapes = ["throughput", "latency"] if args.shape == "both" else [args.shape]
        for shape in shapes:
            made = batches(workdir, shape, args.batches)
            urls = {"sqlite": f"sqlite:///{workdir}/{shape}.db",
                    "postgresql": stack.enter_context(pg_schema())}
            if args.sync_off:
                urls["pg sync off"] = stack.enter_context(pg_schema("-csynchronous_commit=off"))
            print(f"{shape}:")
            measure(urls, made, args.profile)


if __name__ == "__main__":
    main()
