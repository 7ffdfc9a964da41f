"""`tagwatch bench cluster`, run as a user runs it, tiny: a three-node NATS cluster started
by the benchmark, a PostgreSQL record; one worker then two, one kill -9. Checks the keys
and that nothing was lost or doubled, not the speed (the figures are whatever this machine
gives). Also: a missing PostgreSQL or nats-server is refused, naming it and the flag."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from tagwatch.bench.nats_cluster import nats_server_binary
from tests.conftest import ROOT
from tests.record_db import PG_URL

KEYS = {
    "one_worker_fixes_per_s", "two_workers_fixes_per_s", "ratio_two_over_one",
    "one_worker_runs", "two_workers_runs", "throughput_fixes_lost", "throughput_fixes_doubled",
    "cpu_s_per_1000_fixes", "kills", "takeovers", "takeover_median_s", "takeover_max_s",
    "takeover_per_kill_s", "takeover_bound_s", "rebalance_after_restart_s",
    "published_pubacked", "fixes_in_record", "fixes_lost", "fixes_doubled", "alerts_opened",
    "alerts_opened_twice", "nats", "record", "partitions", "lease_ttl_s",
    "load_average_before", "load_average_after", "machine",
}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", "bench", "cluster", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout,
    )


def _schemas() -> set[str]:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tagwatch_cbench_%'"
        ).fetchall()
    return {name for (name,) in rows}


def test_without_a_record_it_says_what_is_missing_and_how_to_give_it() -> None:
    result = run("--fixes", "10")
    assert result.returncode == 1
    assert "needs a PostgreSQL record" in result.stderr
    assert "--record postgresql://" in result.stderr


def test_an_unreachable_record_is_named() -> None:
    result = run("--record", "postgresql://postgres@127.0.0.1:1/test", "--fixes", "10")
    assert result.returncode == 1
    assert "no PostgreSQL at --record postgresql://postgres@127.0.0.1:1/test" in result.stderr


def test_a_missing_nats_server_is_named() -> None:
    if not PG_URL:
        pytest.skip("needs PostgreSQL (TAGWATCH_TEST_POSTGRES): the record is checked first")
    result = run("--record", PG_URL, "--nats-server", "/nonexistent/nats-server")
    assert result.returncode == 1
    assert "--nats-server /nonexistent/nats-server" in result.stderr
    assert "apt-get install nats-server" in result.stderr


def test_a_tiny_run_gives_every_figure_and_loses_nothing() -> None:
    if not PG_URL:
        pytest.skip("needs PostgreSQL (TAGWATCH_TEST_POSTGRES)")
    if nats_server_binary() is None:
        pytest.skip("needs a nats-server (apt-get install nats-server)")
    before = _schemas()
    result = run("--record", PG_URL, "--fixes", "300", "--tags", "40", "--rounds", "1",
                 "--kills", "1", "--kill-rate", "100", "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert set(figures) >= KEYS, KEYS - set(figures)
    assert figures["benchmark"] == "cluster"
    assert len(figures["one_worker_runs"]) == len(figures["two_workers_runs"]) == 1
    assert figures["throughput_fixes_lost"] == figures["throughput_fixes_doubled"] == 0
    assert figures["kills"] == 1 and figures["takeovers"] >= 1
    assert figures["published_pubacked"] > 0
    assert figures["fixes_in_record"] == figures["published_pubacked"]
    assert figures["fixes_lost"] == figures["fixes_doubled"] == 0
    assert figures["alerts_opened"] > 0  # the stream makes breaches, so "twice" means something
    assert figures["alerts_opened_twice"] == 0
    assert "[bench cluster" in result.stderr  # progress on stderr, stdout only the figures
    assert _schemas() - before == set()  # its schemas are dropped
