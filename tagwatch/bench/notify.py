"""Notification latency: breach fix published -> SMS request at the (local) Twilio API.

`run(broker, breaches)` starts a local Twilio stub, a private Mosquitto when no broker
is given, and `tagwatch run` with [notify.twilio] pointed at the stub. There are
`breaches` cases, each with one tag, one victim with a phone of their own and a small
exclusion zone ("home") for that victim. Each tag breaches once: a first fix inside
(probable), then BREACH_GAP_S later a second (confirmed: the victim's SMS goes out).
Breaches start every SPACING_S, so several are in flight at once, as on a busy day.
Latency is timed on one clock (perf_counter, same process) from publishing the
confirming fix to the SMS request arriving at the stub; SMSes are matched to breaches
by the victim's phone number.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgspec
import numpy as np
import orjson
import paho.mqtt.client as mqtt

from tagwatch.bench.e2e import BenchDaemon, BenchError
from tagwatch.bench.mosquitto import PrivateMosquitto
from tagwatch.bench.report import Progress
from tagwatch.bench.twilio_stub import TwilioStub
from tagwatch.ingest.mqtt import BrokerSettings

SID = "AC" + "b" * 32
TOKEN = "bench-token"
FROM = "+447700900000"
SPACING_S = 0.05
BREACH_GAP_S = 0.2
WAIT_S = 30.0
HALF = 0.0003  # degrees: the home square is about 66 m by 42 m


def run(broker: str | None, breaches: int = 200) -> dict:
    if not 1 <= breaches <= 10_000:
        raise ValueError(f"breaches {breaches}: must be 1..10000")
    progress = Progress("bench notify")
    with contextlib.ExitStack() as stack:
        private = broker is None
        if broker is None:
            broker = stack.enter_context(PrivateMosquitto()).url
        used = f"{broker} ({'private mosquitto started by the benchmark' if private else 'given'})"
        progress.step(f"broker: {used}")
        stub = stack.enter_context(TwilioStub(SID, TOKEN))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tw-notify-")))
        centres = _write_cases(workdir / "cases", breaches)
        prefix = f"bench/{uuid.uuid4().hex[:8]}/tagwatch/v1"
        extra = (
            f'[notify.twilio]\naccount_sid = "{SID}"\nfrom = "{FROM}"\napi_base = "{stub.url}"\n'
        )
        progress.step(f"tagwatch run with [notify.twilio] at {stub.url}")
        daemon = BenchDaemon(workdir, broker, prefix, extra, {"TWILIO_AUTH_TOKEN": TOKEN})
        try:
            progress.step(f"{breaches} breaches, one every {SPACING_S * 1000:.0f} ms")
            sent = _publish(BrokerSettings.from_url(broker), prefix, centres)
            received = stub.wait_for(breaches, WAIT_S)
        finally:
            daemon.stop()
    latencies = _match(sent, received)
    progress.done()
    if not latencies:
        raise BenchError(
            f"no SMS reached the Twilio stub within {WAIT_S:.0f} s; see the daemon log in {workdir}"
        )
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "benchmark": "notify",
        "broker": used,
        "breaches": breaches,
        "sms_received": len(received),
        "p50_ms": round(float(p50), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(max(latencies)), 1),
    }


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


def _write_cases(folder: Path, n: int) -> list[tuple[float, float]]:
    """n cases across London, each a tag, a victim with a phone, and a home zone."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    centres = []
    for i in range(n):
        lon, lat = float(rng.uniform(-0.4, 0.2)), float(rng.uniform(51.35, 51.65))
        centres.append((lon, lat))
        ring = [
            [lon - HALF, lat - HALF],
            [lon + HALF, lat - HALF],
            [lon + HALF, lat + HALF],
            [lon - HALF, lat + HALF],
            [lon - HALF, lat - HALF],
        ]
        doc = {
            "type": "FeatureCollection",
            "case": {
                "id": f"C-N{i:05d}",
                "tags": [f"NT-{i:05d}"],
                "timezone": "Europe/London",
                "victims": [{"id": f"V-{i:05d}", "phone": phone(i)}],
            },
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {"zone": "home", "kind": "exclusion", "victim": f"V-{i:05d}"},
                }
            ],
        }
        (folder / f"C-N{i:05d}.geojson").write_bytes(orjson.dumps(doc))
    return centres


def _schedule(centres: list[tuple[float, float]]) -> list[tuple[float, int, bool]]:
    """(wall offset s, case index, confirming?) in publishing order."""
    steps = [(i * SPACING_S, i, False) for i in range(len(centres))]
    steps += [(i * SPACING_S + BREACH_GAP_S, i, True) for i in range(len(centres))]
    return sorted(steps)


def _publish(settings: BrokerSettings, prefix: str, centres) -> dict[str, float]:
    """Publish the breaches; returns phone -> perf_counter of the confirming publish."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-notify-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(settings.host, settings.port)
    client.loop_start()
    if not connected.wait(10):
        raise BenchError(f"no CONNACK from {settings.host}:{settings.port} within 10 s")
    sent: dict[str, float] = {}
    last = None
    start = time.perf_counter()
    try:
        for offset, i, confirming in _schedule(centres):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            lon, lat = centres[i]
            fix = {
                "ts": round(time.time(), 3),
                "lat": lat,
                "lon": lon,
                "acc": 5,
                "seq": int(confirming),
            }
            if confirming:
                sent[phone(i)] = time.perf_counter()
            last = client.publish(f"{prefix}/tags/NT-{i:05d}/fix", msgspec.json.encode(fix), qos=1)
        if last is not None:
            last.wait_for_publish(10)  # in-order PUBACKs: every fix is with the broker
    finally:
        client.loop_stop()
        client.disconnect()
    return sent


def _match(sent: dict[str, float], received) -> list[float]:
    first: dict[str, float] = {}
    for request in received:
        first.setdefault(request.form.get("To", ""), request.at)
    return [(first[p] - t) * 1000 for p, t in sent.items() if p in first]


def main(broker: str | None, breaches: int = 200, as_json: bool = False) -> int:
    """`tagwatch bench notify [--broker URL] [--breaches N] [--json]`."""
    from tagwatch.bench.report import machine

    try:
        result = run(broker, breaches)
    except (BenchError, OSError) as exc:
        print(f"tagwatch bench notify: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({**result, "machine": machine()}, sort_keys=True))
        return 0
    print(
        f"breach fix published -> SMS request at the Twilio API, {result['breaches']} "
        f"breaches ({result['sms_received']} SMS received), broker {result['broker']}"
    )
    print(
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms"
    )
    return 0
