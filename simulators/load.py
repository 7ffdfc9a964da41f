"""`tagwatch-sim load`: sustained fix load, end-to-end latency (publish to alert), throughput.

N stationary tags around a small exclusion zone send fixes in turn at R fixes/s
in total. Every tag cycles two fixes inside, then `breach_every - 2` outside (the
point outside is 400 m away, beyond the warning ring), so the first fix inside
opens a probable breach, the second confirms it and the next two outside end it:
alerts keep coming back. The default 4 is an alert storm (three fixes in four
change an alert); 50 is closer to a real caseload. A breach
record (`zone.breach`, `open`) is matched to its fix by tag and `ts`;
latency is its arrival minus the fix's publish time.

The fixes are sent now but dated in event time, which runs faster than the wall
clock and ends before now (a fix dated ahead of its arrival is no evidence): the
two fixes inside are APART_S apart (independent evidence, DESIGN 3.6), and the
tag's first fix inside and first fix outside come GAP_S after its previous fix,
longer than the engine's motion model remembers (STALE_S), so neither the jump
in nor the jump out is judged a displacement (multipath) rather than the tag. The daemon must load
the case file `write_cases` writes (the load tags and the zone).

Bounded: at most MAX_TAGS tags, MAX_RATE fixes/s, MAX_DURATION_S seconds. Any
broker the options reach (a compose service names the broker service; the tests
use loopback ones only); the load tags are `LT-*` of case C-LOAD, which a
production daemon refuses as unknown tags (never point it at production: the
ACL's simulator account may publish any tag's fixes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from simulators.broker import BrokerOptions
from simulators.runner import client, no_delay
from tagwatch.engine.evidence import STALE_S
from tagwatch.wire import Topics, parse_rfc3339

MAX_TAGS, MAX_RATE, MAX_DURATION_S = 100_000, 100_000, 3600
CASE_ID = "C-LOAD"
ZONE_CENTER = (-0.1000, 51.5000)
INSIDE = (-0.1000, 51.5000)
OUTSIDE = (-0.1000, 51.5036)  # 400 m north
IN_FLIGHT = 1000
APART_S = 30.0  # event time between the two fixes inside: independent evidence
GAP_S = STALE_S + 60.0  # event time before the jump in and the jump out: a fresh start
EARLIEST_TS = 1e9  # the event clock of a run may not start before 2001


def tag_id(i: int) -> str:
    return f"LT-{i:06d}"


def write_cases(folder: Path, tags: int) -> Path:
    """The case file the daemon must load for a load run of `tags` tags."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "type": "FeatureCollection",
        "case": {"id": CASE_ID, "tags": [tag_id(i) for i in range(tags)],
                 "timezone": "Europe/London", "victims": [],
                 "rules": {"max_speed_mps": 100000, "loiter_s": 86400}},
        "features": [{"type": "Feature",
                      "geometry": {"type": "Point", "coordinates": list(ZONE_CENTER)},
                      "properties": {"zone": "load", "kind": "exclusion", "radius_m": 100,
                                     "warn_m": 50}}],
    }
    path = folder / "C-LOAD.geojson"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@dataclass
class LoadReport:
    sent: int = 0
    expected_alerts: int = 0
    alerts: int = 0
    duration_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def lines(self) -> list[str]:
        rate = self.sent / self.duration_s if self.duration_s else 0.0
        out = [f"sent {self.sent} fixes in {self.duration_s:.1f} s: {rate:.0f} fixes/s achieved",
               f"breach alerts back: {self.alerts} of {self.expected_alerts} expected"]
        if self.latencies_ms:
            p = [self.percentile(q) for q in (50, 95, 99)]
            out.append(f"end-to-end latency (publish to alert): p50 {p[0]:.1f} ms, "
                       f"p95 {p[1]:.1f} ms, p99 {p[2]:.1f} ms, max {max(self.latencies_ms):.1f} ms")
        return out


def check_bounds(tags: int, rate: float, duration: float) -> None:
    if not 1 <= tags <= MAX_TAGS:
        raise ValueError(f"--tags {tags}: must be 1..{MAX_TAGS}")
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"--rate {rate}: must be > 0 and <= {MAX_RATE}")
    if not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"--duration {duration}: must be > 0 and <= {MAX_DURATION_S}")


async def run_load(broker_url: str | BrokerOptions, tags: int, rate: float, duration_s: float,
                   prefix: str = "tagwatch/v1", drain_s: float = 5.0,
                   progress=sys.stderr, breach_every: int = 4) -> LoadReport:
    check_bounds(tags, rate, duration_s)
    if breach_every < 4:
        raise ValueError(f"--breach-every {breach_every}: must be at least 4 "
                         "(two fixes inside, then two outside)")
    event_start(tags, rate, duration_s)
    topics = Topics(prefix)
    report = LoadReport()
    sent_at: dict[tuple[str, int], float] = {}
    async with client(broker_url, "tagwatch-sim-load", IN_FLIGHT) as mqtt:
        no_delay(mqtt)
        await mqtt.subscribe(f"{prefix}/alerts/#", qos=1)
        listener = asyncio.create_task(_collect(mqtt, sent_at, report))
        try:
            await _send(mqtt, topics, tags, rate, duration_s, sent_at, report, progress,
                        breach_every)
            deadline = time.monotonic() + drain_s
            while report.alerts < report.expected_alerts and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    return report


def event_start(tags: int, rate: float, duration_s: float) -> float:
    """Where the tags' event clock starts: early enough that no tag's fix of the run
    is dated after now (each fix moves its tag's clock by at most GAP_S)."""
    per_tag = math.ceil((rate * duration_s + 1) / tags) + 1
    start = math.floor(time.time() - per_tag * GAP_S - 60)
    if start < EARLIEST_TS:
        raise ValueError(f"--rate {rate} --duration {duration_s} --tags {tags}: {per_tag} "
                         f"fixes per tag need more event time than there is; use more tags")
    return start


async def _send(mqtt, topics, tags, rate, duration_s, sent_at, report, progress,
                breach_every: int = 4) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)
    pending: set[asyncio.Task] = set()
    start = time.monotonic()
    clock = [event_start(tags, rate, duration_s)] * tags
    shown = start
    while (elapsed := time.monotonic() - start) < duration_s:
        due = int(rate * elapsed) + 1 - report.sent
        for _ in range(max(0, due)):
            n = report.sent
            i, phase = n % tags, (n // tags) % breach_every
            clock[i] += APART_S if phase not in (0, 2) else GAP_S
            ts = clock[i]
            lon, lat = INSIDE if phase < 2 else OUTSIDE
            if phase == 0:
                sent_at[(tag_id(i), round(ts * 1000))] = time.time()
                report.expected_alerts += 1
            payload = orjson.dumps({"ts": ts, "lat": lat, "lon": lon, "acc": 5.0, "seq": n})
            await gate.acquire()
            task = asyncio.create_task(mqtt.publish(topics.tag_fix(tag_id(i)), payload, qos=1))
            task.add_done_callback(lambda _t: gate.release())
            pending.add(task)
            task.add_done_callback(pending.discard)
            report.sent += 1
        if time.monotonic() - shown >= 1.0:
            shown = time.monotonic()
            _progress(progress, shown - start, report)
        await asyncio.sleep(0.005)
    if pending:
        await asyncio.gather(*pending)
    report.duration_s = time.monotonic() - start
    _progress(progress, report.duration_s, report, end="\n")


async def _collect(mqtt, sent_at, report: LoadReport) -> None:
    async for message in mqtt.messages:
        now = time.time()
        try:
            alert = orjson.loads(message.payload)
            if alert.get("type") != "zone.breach" or alert.get("state") != "open":
                continue
            ts = parse_rfc3339(str(alert["ts"]).replace("Z", "+00:00"))
        except (orjson.JSONDecodeError, AttributeError, KeyError, ValueError):
            continue
        published = sent_at.pop((alert.get("tag"), round(ts * 1000)), None)
        if published is not None:
            report.alerts += 1
            report.latencies_ms.append((now - published) * 1000)


def _progress(stream, elapsed: float, report: LoadReport, end: str = "") -> None:
    p50 = report.percentile(50)
    lat = f"  p50 {p50:.1f} ms" if p50 is not None else ""
    stream.write(f"\r{elapsed:6.1f} s  sent {report.sent}  ({report.sent / max(elapsed, 1e-9):.0f}"
                 f"/s)  alerts {report.alerts}/{report.expected_alerts}{lat}   {end}")
    stream.flush()
