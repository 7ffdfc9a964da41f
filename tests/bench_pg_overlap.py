"""Benchmark (not a test): the daemon's ingest batches one after the other (`_handle`:
evaluate, commit, acknowledge, then the next) against overlapped (`_handle_overlapped`:
the next batch is evaluated while the previous commit flushes), on SQLite and PostgreSQL.

    TAGWATCH_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test \\
    .venv/bin/python tests/bench_pg_overlap.py [--rounds 3] [--batches 10] [--size 2000]

The messages are `tagwatch bench e2e`'s throughput fixes (1,000 tags far from every zone)
through the daemon's own units of work, without a broker (acknowledgements go to a
stand-in). Each round runs every (record, mode) once on a fresh record and a fresh
daemon, in alternation, and prints fixes/s; on a shared machine only the ratios within a
round mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tagwatch.bench import e2e  # noqa: E402
from tagwatch.bench.workload import london_cases  # noqa: E402
from tagwatch.record import Record  # noqa: E402
from tests.bench_pg_commit import _daemon, _messages, pg_schema  # noqa: E402

PREFIX = "bench/x/tagwatch/v1"


class Acks:
    async def ack_many(self, msgs) -> None:
        pass


def run(workdir: Path, url: str, batches: list, overlapped: bool) -> float:
    """Fixes per second for these batches through a fresh daemon on the record at url."""
    record = Record.open(url)
    daemon = _daemon(workdir, record)
    daemon.conn = Acks()  # type: ignore[assignment]

    async def feed() -> float:
        await daemon._handle(batches[0])  # warm-up: every tag and chain head seen once
        start = time.perf_counter()
        for batch in batches[1:]:
            if overlapped:
                await daemon._handle_overlapped(batch)
            else:
                await daemon._handle(batch)
        async with daemon._unit():  # the last commit done
            pass
        return time.perf_counter() - start

    try:
        seconds = asyncio.run(feed())
    finally:
        record.close()
    return sum(len(b) for b in batches[1:]) / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument(
        "--switch-ms", type=float, help="sys.setswitchinterval (the GIL's hand-over), in ms"
    )
    args = parser.parse_args()
    if args.switch_ms:
        sys.setswitchinterval(args.switch_ms / 1000)
    pg = os.environ.get("TAGWATCH_TEST_POSTGRES", "")
    with tempfile.TemporaryDirectory(prefix="bench-ovl-") as tmp:
        workdir = Path(tmp)
        cases = london_cases(e2e.TAGS, seed=11)
        e2e._write_cases(cases, workdir / "cases")
        pairs = e2e._payloads(cases, args.size * (args.batches + 1))
        batches = [
            _messages(PREFIX, pairs[i : i + args.size]) for i in range(0, len(pairs), args.size)
        ]
        print(f"{len(batches) - 1} batches of {args.size} fixes (after one warm-up batch)")
        for n in range(args.rounds):
            figures = {}
            for name in ("sqlite", "postgresql") if pg else ("sqlite",):
                for overlapped in (False, True):
                    with contextlib.ExitStack() as stack:
                        if name == "sqlite":
                            url = f"sqlite:///{workdir}/r{n}-{int(overlapped)}.db"
                        else:
                            url = stack.enter_context(pg_schema())
                        figures[name, overlapped] = run(workdir, url, batches, overlapped)
            line = []
            for name in ("sqlite", "postgresql") if pg else ("sqlite",):
                one, over = figures[name, False], figures[name, True]
                line.append(f"{name} {one:,.0f} -> {over:,.0f} fixes/s (x{over / one:.2f})")
            load = os.getloadavg()[0]
            print(f"round {n + 1} (load {load:.1f}): " + "; ".join(line), flush=True)


if __name__ == "__main__":
    main()
