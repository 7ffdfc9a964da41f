"""Benchmark (not a test): the daemon's unit of work per fix, deterministic, no MQTT.

    .venv/bin/python -m tests.bench_hotpath [--fixes 40000] [--phase all|pipeline|effects]
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m tests.bench_hotpath --fixes 10000   # and again with 50000

What `bench e2e`'s throughput run makes the daemon do for each micro-batch, without the
broker: `Pipeline.process` (decode, geometry, rules), `EffectsBuilder.from_result` with
the pipeline's checkpoints, and the SQLite record's commit. 1,000 London cases, one fix a
tag round-robin about 10 km from its zones (the quiet path, as in `bench e2e`), batches of
2,000 messages (the daemon's batch_max), fixed times: the same instructions every run.

Instruction counts are what a loaded machine cannot disturb: run it under callgrind with
two --fixes and divide the difference by the difference of fixes (start-up cancels out).
`--phase pipeline` stops after the pipeline, `effects` after the effects (no commit), so
the differences between phases say where the cost is. It prints CPU seconds a fix as well
(process time; noisy on a loaded machine). It uses only APIs the daemon had since 932dc3d,
so it runs unchanged in older trees (PYTHONPATH=<tree> and this file).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from tagwatch.bench.workload import london_cases
from tagwatch.config import load_config
from tagwatch.daemon import main as daemon_main
from tagwatch.daemon.service import Daemon
from tagwatch.pipeline import Inbound
from tagwatch.record import Record
from zones import ZoneSet

TAGS = 1_000
BATCH = 2_000
T0 = 1_795_000_000.0
WARMUP_BATCHES = 2


def messages(cases, fixes: int) -> list[Inbound]:
    """`bench e2e`'s throughput fixes (tagwatch.bench.e2e._payloads) at fixed times."""
    rng = np.random.default_rng(3)
    bearings = rng.uniform(0, 2 * np.pi, len(cases))
    jitter = rng.normal(0, 0.00005, (fixes, 2))
    out = []
    for i in range(fixes):
        k = i % len(cases)
        zone = cases[k].zones[0]
        ts = round(T0 + i * 0.001, 3)
        fix = {
            "ts": ts,
            "lat": round(float(zone.frame.lat + 0.08 * np.sin(bearings[k]) + jitter[i, 0]), 6),
            "lon": round(float(zone.frame.lon + 0.12 * np.cos(bearings[k]) + jitter[i, 1]), 6),
            "acc": 8,
            "seq": i // len(cases),
        }
        topic = f"tagwatch/v1/tags/{cases[k].tags[0]}/fix"
        out.append(Inbound(topic, msgspec.json.encode(fix), ts + 0.05))
    return out


def _instrument(state: str) -> None:
    """Callgrind's instrumentation on or off in this process (run with --instr-atstart=no):
    only the measured batches are counted, not start-up or the warm-up."""
    subprocess.run(
        ["callgrind_control", "-i", state, str(os.getpid())], check=True, stdout=subprocess.DEVNULL
    )


def run(
    fixes: int, phase: str, folder: Path, callgrind: bool, profile: str | None = None
) -> tuple[float, int]:
    """(CPU seconds a measured fix, fixes accepted). The first WARMUP_BATCHES batches
    (each tag's first fixes, its chain's first entries) are not measured."""
    cases = london_cases(TAGS)
    config_path = folder / "tagwatch.toml"
    config_path.write_text(f'[record]\nurl = "sqlite:///{folder / "record.db"}"\n')
    config = load_config(config_path, {})
    record = Record.open(config.record.url)
    daemon = Daemon(config, record, ZoneSet(cases), {c.id: c for c in cases})
    inbound = messages(cases, fixes + WARMUP_BATCHES * BATCH)
    freeze = getattr(daemon_main, "_freeze_startup_objects", None)
    if freeze is not None:  # as `tagwatch run` does after start-up (trees since 5a23f87)
        freeze()
    accepted = 0
    profiler = cProfile.Profile() if profile else None
    measured = WARMUP_BATCHES * BATCH
    for i in range(0, fixes + measured, BATCH):
        if i == measured:
            if callgrind:
                _instrument("on")
            if profiler is not None:
                profiler.enable()
            started = time.process_time()
        batch = inbound[i : i + BATCH]
        now = batch[-1].received
        result = daemon.pipeline.process(batch, raised=now)
        accepted += len(result.accepted)
        if phase == "pipeline":
            continue
        fx = daemon.effects.from_result(result, daemon.pipeline.checkpoints(), now)
        if phase == "all":
            record.commit(fx.batch, now)
    spent = time.process_time() - started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    if callgrind:
        _instrument("off")
    record.close()
    return spent / fixes, accepted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixes", type=int, default=40_000)
    parser.add_argument("--phase", choices=("all", "pipeline", "effects"), default="all")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count only the measured batches (valgrind --instr-atstart=no)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="cProfile the measured batches into FILE (call counts are exact)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        spent, accepted = run(args.fixes, args.phase, Path(folder), args.callgrind, args.profile)
    total = args.fixes + WARMUP_BATCHES * BATCH
    if accepted != total:
        raise SystemExit(f"only {accepted} of {total} fixes accepted: the workload is off")
    print(f"{args.phase}: {args.fixes} fixes measured, {spent * 1e6:.1f} us CPU a fix")


if __name__ == "__main__":
    main()
