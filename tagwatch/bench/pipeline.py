"""`tagwatch bench pipeline`: decode + geometry + rules, batched beside one at a time.

Workload: a generated day of 1,000 tags reporting one fix every 30 s (2.88
million fixes), each tag with its own London case (1 to 5 zones). Each
offender lives 3 to 15 km from the victim's zones and moves about the city;
one tag in twenty drives towards the zones once during the day, so breach,
approach and warning rules fire. Messages are MQTT-shaped (topic, JSON
payload) and go through exactly the daemon's path.

The one-at-a-time version is the same pipeline called with one message per
batch; it is timed on the first part of the same day (it is too slow for all
of it) and both rates are per fix. Batches are the daemon's default `batch_max`
(2,000 messages): the batches it forms whenever messages wait.
"""

from __future__ import annotations

import time

import msgspec
import numpy as np

from tagwatch.bench.report import Progress
from tagwatch.bench.workload import london_cases
from tagwatch.config import IngestConfig, Rules
from tagwatch.pipeline import Inbound, Pipeline
from tagwatch.wire import Topics
from zones import ZoneSet

DAY_S = 86_400
INTERVAL_S = 30
START = 1_795_000_000.0  # a Thursday, 08:26 UTC
BATCH = IngestConfig.batch_max  # what the daemon takes at once when messages wait


def generate_day(cases, tags: int, seconds: int, seed: int = 5) -> list[Inbound]:
    """Time-ordered messages, one fix per tag per interval."""
    rng = np.random.default_rng(seed)
    topics = Topics()
    steps = seconds // INTERVAL_S
    centre = np.array([[c.zones[0].frame.lon, c.zones[0].frame.lat] for c in cases[:tags]])
    # Offsets in metres from the victim's first zone: start 3-15 km away, then wander.
    bearing = rng.uniform(0, 2 * np.pi, tags)
    start = rng.uniform(3000, 15000, tags)
    velocity = rng.normal(0, 1.0, (steps, tags, 2)).cumsum(axis=0) * 0.3
    velocity = np.clip(velocity, -12, 12)
    east = start * np.cos(bearing) + (velocity[:, :, 0] * INTERVAL_S).cumsum(axis=0) * 0.2
    north = start * np.sin(bearing) + (velocity[:, :, 1] * INTERVAL_S).cumsum(axis=0) * 0.2
    _drive_in(east, north, rng)
    lat = centre[:, 1] + north / 111_320.0
    lon = centre[:, 0] + east / (111_320.0 * np.cos(np.radians(centre[:, 1])))
    tag_ids = [c.tags[0] for c in cases[:tags]]
    jitter = rng.uniform(0, INTERVAL_S, tags)
    messages = []
    for k in range(steps):
        t = START + k * INTERVAL_S
        for i, tag in enumerate(tag_ids):
            payload = {
                "ts": round(float(t + jitter[i]), 3),
                "lat": round(float(lat[k, i]), 7),
                "lon": round(float(lon[k, i]), 7),
                "acc": 8,
                "seq": k,
            }
            messages.append(Inbound(topics.tag_fix(tag), msgspec.json.encode(payload), None))
    return messages


def _drive_in(east: np.ndarray, north: np.ndarray, rng: np.random.Generator) -> None:
    """One tag in twenty drives at 13 m/s to the zones and stays 10 minutes."""
    steps, tags = east.shape
    for i in range(0, tags, 20):
        begin = int(rng.integers(0, max(1, steps - 120)))
        e0, n0 = east[begin, i], north[begin, i]
        dist = float(np.hypot(e0, n0))
        travel = int(dist / (13 * INTERVAL_S)) + 1
        for s in range(min(travel + 20, steps - begin)):
            frac = max(0.0, 1 - s / travel)
            east[begin + s, i] = e0 * frac
            north[begin + s, i] = n0 * frac


def run(tags: int = 1_000, seconds: int = DAY_S, single_sample: int = 60_000) -> dict:
    progress = Progress("bench pipeline")
    progress.step(f"building {tags:,} cases")
    cases = london_cases(tags, seed=7)
    zoneset = ZoneSet(cases)
    progress.step(f"generating {seconds // INTERVAL_S * tags:,} fixes ({seconds / 3600:.0f} h)")
    messages = generate_day(cases, tags, seconds)
    progress.step("batched pipeline")
    batched_s, batched_alerts = _time(zoneset, messages, BATCH)
    sample = messages[: min(single_sample, len(messages))]
    progress.step(f"one message at a time, on the first {len(sample):,} fixes")
    single_s, _ = _time(zoneset, sample, 1)
    same_s, _ = _time(zoneset, sample, BATCH)
    progress.done()
    batched = len(messages) / batched_s
    single = len(sample) / single_s
    return {
        "benchmark": "pipeline",
        "tags": tags,
        "fixes": len(messages),
        "alert_records": batched_alerts,
        "batch": BATCH,
        "batched_fixes_per_s": round(batched),
        "one_at_a_time_fixes_per_s": round(single),
        "ratio": round(batched / single, 1),
        "same_sample_ratio": round(single_s / same_s, 1),
    }


def _time(zoneset: ZoneSet, messages: list[Inbound], batch: int) -> tuple[float, int]:
    pipeline = Pipeline(zoneset, Rules(), Topics(), event_clock=True)
    alerts = 0
    start = time.perf_counter()
    for i in range(0, len(messages), batch):
        alerts += len(pipeline.process(messages[i : i + batch]).records)
    return time.perf_counter() - start, alerts


def main(small: bool = False) -> dict:
    if small:
        return run(tags=100, seconds=3 * 3600, single_sample=3_000)
    return run()


RESULT_LINES: list[tuple[str, str]] = [
    ("batched_fixes_per_s", f"tagwatch pipeline, batches of {BATCH:,}"),
    ("one_at_a_time_fixes_per_s", "same pipeline, one message at a time"),
    ("ratio", "ratio batched / one at a time"),
    ("same_sample_ratio", "ratio on the same first fixes"),
]
