"""`tagwatch bench e2e --broker URL`: the daemon end to end beside a bare receiver.

Both measurements use the same broker and the same publisher in one run:

1. Throughput. N fixes from 1,000 tags are published at QoS 1 as fast as the
   broker takes them. A bare paho-mqtt subscriber (QoS 1, persistent session)
   that only counts messages is timed from first publish to last message
   received; then `tagwatch run` (SQLite record, every fix recorded, acks
   after commit) is timed from first publish until its
   `tagwatch_fixes_total` metric says every fix was taken in.
2. Latency. At a steady 2,000 fixes/s, one tag in ten enters its victim's home
   zone (two fixes inside, so the breach confirms); the time from publishing
   a fix to receiving the alert record it caused is measured, p50/p99.
3. Memory. The resident size of a process holding 100,000 tags' rule state
   (each tag with its own case and one fix processed).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import msgspec
import numpy as np
import orjson
import paho.mqtt.client as mqtt

from tagwatch.bench.report import Progress
from tagwatch.bench.workload import london_cases
from tagwatch.mqtt import BrokerSettings

TAGS = 1_000


def run(
    broker: str, fixes: int = 100_000, latency_s: float = 10.0, memory_tags: int = 100_000
) -> dict:
    progress = Progress("bench e2e")
    settings = BrokerSettings.from_url(broker)
    with tempfile.TemporaryDirectory(prefix="tagwatch-bench-") as tmp:
        workdir = Path(tmp)
        cases = london_cases(TAGS, seed=11)
        _write_cases(cases, workdir / "cases")
        payloads = _payloads(cases, fixes)
        progress.step(f"bare receiver: {fixes:,} fixes")
        bare_s = _bare_receiver(settings, payloads)
        progress.step(f"tagwatch run: {fixes:,} fixes, every one recorded")
        tagwatch_s = _through_daemon(broker, settings, workdir, payloads)
        progress.step(f"latency at 2,000 fixes/s for {latency_s:.0f} s")
        latency = _latency(broker, settings, workdir, cases, latency_s)
    progress.step(f"memory with {memory_tags:,} tags' state")
    memory_mb = _memory(memory_tags)
    progress.done()
    tagwatch_rate, bare_rate = fixes / tagwatch_s, fixes / bare_s
    return {
        "benchmark": "e2e",
        "broker": broker,
        "fixes": fixes,
        "tagwatch_fixes_per_s": round(tagwatch_rate),
        "bare_receiver_fixes_per_s": round(bare_rate),
        "ratio": round(tagwatch_rate / bare_rate, 2),
        "p50_latency_ms": latency[0],
        "p99_latency_ms": latency[1],
        "latency_samples": latency[2],
        "rss_mb_100k_tags": memory_mb,
    }


def _write_cases(cases, folder: Path) -> None:
    folder.mkdir()
    for case in cases:
        features = []
        for zone in case.zones:
            props = {"zone": zone.zone_id, "kind": zone.kind}
            if zone.radius_m:
                props["radius_m"] = zone.radius_m
            features.append(
                {
                    "type": "Feature",
                    "geometry": zone.geometry.__geo_interface__,
                    "properties": props,
                }
            )
        doc = {
            "type": "FeatureCollection",
            "case": {"id": case.id, "tags": list(case.tags), "timezone": case.timezone},
            "features": features,
        }
        (folder / f"{case.id}.geojson").write_bytes(orjson.dumps(doc))


def _payloads(cases, fixes: int) -> list[tuple[str, bytes]]:
    """Fixes far from every zone (the common case), round-robin over the tags."""
    rng = np.random.default_rng(3)
    now = time.time()
    out = []
    for i in range(fixes):
        case = cases[i % len(cases)]
        zone = case.zones[0]
        bearing = rng.uniform(0, 2 * np.pi)
        lat = zone.frame.lat + 0.08 * np.sin(bearing)
        lon = zone.frame.lon + 0.12 * np.cos(bearing)
        fix = {
            "ts": round(now + i * 0.001, 3),
            "lat": round(float(lat), 6),
            "lon": round(float(lon), 6),
            "acc": 8,
            "seq": i,
        }
        out.append((case.tags[0], msgspec.json.encode(fix)))
    return out


def _client(settings: BrokerSettings, client_id: str, clean: bool = True) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    client.connect(settings.host, settings.port, clean_start=clean)
    client.loop_start()
    return client


def _publish_all(client: mqtt.Client, prefix: str, payloads: list[tuple[str, bytes]]) -> float:
    start = time.perf_counter()
    infos = [client.publish(f"{prefix}/tags/{tag}/fix", p, qos=1) for tag, p in payloads]
    for info in infos[-1000:]:
        info.wait_for_publish(timeout=60)
    return start


def _bare_receiver(settings: BrokerSettings, payloads) -> float:
    prefix = f"bench/{uuid.uuid4().hex[:8]}/tagwatch/v1"
    done = threading.Event()
    count = [0]

    def on_message(_client, _userdata, _msg) -> None:
        count[0] += 1
        if count[0] == len(payloads):
            done.set()

    receiver = _client(settings, f"bench-bare-{uuid.uuid4().hex[:6]}")
    receiver.on_message = on_message
    receiver.subscribe(f"{prefix}/tags/+/fix", qos=1)[1]
    time.sleep(0.5)  # SUBACK settles; a bench, not a test
    publisher = _client(settings, f"bench-pub-{uuid.uuid4().hex[:6]}")
    start = _publish_all(publisher, prefix, payloads)
    if not done.wait(timeout=300):
        raise RuntimeError(f"bare receiver got {count[0]} of {len(payloads)} fixes")
    elapsed = time.perf_counter() - start
    publisher.disconnect()
    receiver.disconnect()
    return elapsed


def _config(workdir: Path, broker: str, prefix: str, port: int) -> Path:
    db = workdir / f"record-{uuid.uuid4().hex[:6]}.db"
    text = f"""
[broker]
url = "{broker}"
client_id = "tagwatch-bench-{uuid.uuid4().hex[:6]}"
topic_prefix = "{prefix}"

[cases]
path = "{workdir / "cases"}"

[record]
url = "sqlite:///{db}"

[ingest]
batch_max = 1000
batch_wait_ms = 5

[feed]
listen = "127.0.0.1:{port}"
"""
    path = workdir / f"tagwatch-{port}.toml"
    path.write_text(text)
    return path


class _Daemon:
    def __init__(self, workdir: Path, broker: str, prefix: str) -> None:
        from tagwatch.embedded_broker import free_port

        self.port = free_port()
        config = _config(workdir, broker, prefix, self.port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGWATCH_")}
        self.log = open(workdir / f"daemon-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tagwatch.cli", "run", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._wait_ready()

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read()
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name) and not line.startswith(f"{name}_"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tagwatch run exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("tagwatch run did not become ready within 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def _through_daemon(broker: str, settings: BrokerSettings, workdir: Path, payloads) -> float:
    prefix = f"bench/{uuid.uuid4().hex[:8]}/tagwatch/v1"
    daemon = _Daemon(workdir, broker, prefix)
    try:
        publisher = _client(settings, f"bench-pub-{uuid.uuid4().hex[:6]}")
        start = _publish_all(publisher, prefix, payloads)
        deadline = time.monotonic() + 600
        while daemon.metric("tagwatch_fixes_total") < len(payloads):
            if time.monotonic() > deadline:
                raise RuntimeError("tagwatch did not take in every fix within 600 s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        publisher.disconnect()
        return elapsed
    finally:
        daemon.stop()


def _latency(broker, settings, workdir: Path, cases, seconds: float) -> tuple[float, float, int]:
    """Publish at 2,000 fixes/s; every 10th tag breaches; time fix -> alert record."""
    prefix = f"bench/{uuid.uuid4().hex[:8]}/tagwatch/v1"
    daemon = _Daemon(workdir, broker, prefix)
    sent: dict[tuple[str, str], float] = {}
    latencies: list[float] = []

    def on_message(_client, _userdata, msg) -> None:
        record = json.loads(msg.payload)
        key = (record["tag"], record["ts"])
        if key in sent and record["type"] == "zone.breach":
            latencies.append((time.perf_counter() - sent.pop(key)) * 1000)

    try:
        listener = _client(settings, f"bench-alerts-{uuid.uuid4().hex[:6]}")
        listener.on_message = on_message
        listener.subscribe(f"{prefix}/alerts/#", qos=1)
        publisher = _client(settings, f"bench-pub-{uuid.uuid4().hex[:6]}")
        time.sleep(0.5)
        _paced(publisher, prefix, cases, seconds, sent)
        time.sleep(1.0)  # the last alerts arrive; a bench, not a test
        listener.disconnect()
        publisher.disconnect()
    finally:
        daemon.stop()
    if not latencies:
        raise RuntimeError("no breach alert came back")
    p50, p99 = np.percentile(latencies, [50, 99])
    return round(float(p50), 1), round(float(p99), 1), len(latencies)


def _paced(publisher, prefix: str, cases, seconds: float, sent: dict) -> None:
    from tagwatch.wire import rfc3339

    rate, step = 2000, 0.01
    per_step = int(rate * step)
    start = time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        now = time.time()
        for _ in range(per_step):
            case = cases[k % len(cases)]
            zone = case.zones[0]
            inside = (k // len(cases)) % 2 == 0 and k % 10 == 0
            offset = 0.0 if inside else 0.1
            fix = {
                "ts": round(now + (k % 1000) * 1e-6, 6),
                "lat": zone.frame.lat + offset,
                "lon": zone.frame.lon,
                "acc": 5,
                "seq": k,
            }
            if inside:
                sent[(case.tags[0], rfc3339(fix["ts"]))] = time.perf_counter()
            publisher.publish(f"{prefix}/tags/{case.tags[0]}/fix", msgspec.json.encode(fix), qos=1)
            k += 1
        lag = start + (k / rate) - time.perf_counter()
        if lag > 0:
            time.sleep(lag)


def _memory(tags: int) -> float:
    """RSS of a fresh process holding `tags` tags' state (case, zones, one fix each)."""
    code = (
        "import resource, orjson\n"
        "from tagwatch.bench.e2e import _memory_child\n"
        f"_memory_child({tags})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900
    )
    return float(out.stdout.strip())


def _memory_child(tags: int) -> None:
    from tagwatch.config import Rules
    from tagwatch.pipeline import Inbound, Pipeline
    from tagwatch.wire import Topics
    from zones import ZoneSet

    cases = london_cases(tags, seed=13)
    pipeline = Pipeline(ZoneSet(cases), Rules(), Topics(), event_clock=False)
    now = time.time()
    for i in range(0, tags, 1000):
        batch = [
            Inbound(
                Topics().tag_fix(c.tags[0]),
                orjson.dumps(
                    {
                        "ts": now,
                        "lat": c.zones[0].frame.lat + 0.1,
                        "lon": c.zones[0].frame.lon,
                        "acc": 8,
                        "seq": 1,
                    }
                ),
                now,
            )
            for c in cases[i : i + 1000]
        ]
        pipeline.process(batch)
    print(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


RESULT_LINES: list[tuple[str, str]] = [
    ("tagwatch_fixes_per_s", "tagwatch run, every fix recorded"),
    ("bare_receiver_fixes_per_s", "bare paho-mqtt receiver"),
    ("ratio", "ratio tagwatch / bare receiver"),
]
