"""Every scenario in config/scenarios/ passes `--verify` against the real daemon.

Each scenario gets a daemon of its own (scenarios start on different dates, and
rule state from one would colour the next): a fresh SQLite record, a unique topic
prefix, the scenario's own cases, and the event-time watchdog clock, because fix
timestamps are scenario time in the past and accelerated (DESIGN 3.6, config
[ingest] clock). The broker is the suite's: a private Mosquitto, or the embedded
broker where none is installed.

Pacing: each scenario is played in about TARGET_WALL_S of wall time (at least
MIN_SPEED), so the whole file stays well under a minute and a half on 2 cores.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from simulators.runner import run_scenario
from simulators.scenario import load_scenario
from tests.daemon_harness import make_daemon

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "config" / "scenarios").glob("*.toml"))
TARGET_WALL_S = 1.0
MIN_SPEED = 1200.0


def speed_for(duration_s: float) -> float:
    return max(MIN_SPEED, duration_s / TARGET_WALL_S)


def test_every_scenario_file_is_covered():
    assert len(SCENARIOS) >= 14, f"scenarios found in config/scenarios: {len(SCENARIOS)}"


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_verifies_against_the_daemon(path: Path, tmp_path: Path, broker_url: str):
    scenario = load_scenario(path)
    daemon = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db",
                         name=path.stem, cases=scenario.cases,
                         env={"TAGWATCH_INGEST_CLOCK": "event"})
    daemon.start()
    try:
        daemon.wait_ready()
        result = asyncio.run(asyncio.wait_for(
            run_scenario(scenario, broker_url, daemon.prefix, speed_for(scenario.duration_s)),
            timeout=60))
    finally:
        code = daemon.stop()
    assert result.ok, f"{result.summary()}\n--- daemon log tail ---\n{daemon.logs()[-2000:]}"
    assert len(result.met) == len(scenario.expects)
    assert code == 0, daemon.logs()[-2000:]
