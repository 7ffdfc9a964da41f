"""The simulator plays a victim's phone as the OwnTracks app and a tag through a Traccar
server (issue 19 item 6): the phone publishes OwnTracks `location` JSON on
`{owntracks prefix}/USER/DEVICE`, the tag's fixes are POSTed as Traccar's JSON position
forwarding to /ingest/traccar with an ingest user's bearer token. Through the real
daemon and a real Mosquitto, the scenario's proximity alert with that victim comes; and
in process (the scenario check) the same."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from simulators.device import Device, DeviceSpec
from simulators.inprocess import run_inprocess
from simulators.movement import Stationary
from simulators.runner import run_scenario
from simulators.scenario import ScenarioError, load_scenario
from tagwatch.ingest.traccar import traccar_fix
from tagwatch.wire import Topics
from tests.brokers import unique_prefix
from tests.daemon_harness import make_daemon

INGEST = "sim-traccar-token"
USERS = json.dumps([{"name": "traccar", "role": "ingest",
                     "token_sha256": hashlib.sha256(INGEST.encode()).hexdigest()}])
P = (-0.2000, 51.6000)  # the victim's phone; no zone near
M_LAT = 1 / 111_320

CASE = {
    "type": "FeatureCollection",
    "case": {"id": "C-OT", "tags": ["T-OT"], "timezone": "Europe/London",
             "victims": [{"id": "V-OT", "owntracks": "alice/phone", "mobile_radius_m": 500}]},
    "features": [{"type": "Feature",
                  "geometry": {"type": "Point", "coordinates": [-0.1000, 51.5000]},
                  "properties": {"zone": "home", "kind": "exclusion", "radius_m": 100}}],
}

SCENARIO = f"""
[scenario]
name = "phone_and_traccar"
description = "the victim's phone over OwnTracks, the tag through Traccar, the tag comes near"
cases = "cases"
start = "2026-11-02T10:00:00Z"
duration_s = 300
seed = 3

[[victims]]
id = "phone"
protocol = "owntracks"
owntracks = "alice/phone"
interval_s = 20
acc_m = 10
battery_pct = 80
[[victims.moves]]
at = 0
model = "stationary"
point = [{P[0]}, {P[1]}]

[[tags]]
id = "T-OT"
protocol = "traccar"
interval_s = 20
start_s = 5
[[tags.moves]]
at = 0
model = "stationary"
point = [{P[0]}, {P[1] + 2000 * M_LAT:.7f}]
[[tags.moves]]
at = 150
model = "walk"
waypoints = [[{P[0]}, {P[1] + 120 * M_LAT:.7f}]]
speed_mps = 20

[[expect]]
type = "proximity"
tag = "T-OT"
victim = "V-OT"
after_s = 150
within_s = 150

[[forbid]]
type = "tag.no_comms"
"""


def write_scenario(tmp_path: Path) -> Path:
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "C-OT.geojson").write_text(json.dumps(CASE))
    path = tmp_path / "phone_and_traccar.toml"
    path.write_text(SCENARIO)
    return path


def test_the_phone_speaks_owntracks_and_the_tag_traccar() -> None:
    rng = np.random.default_rng(1)
    topics = Topics("tw", owntracks="ot")
    phone = Device(DeviceSpec("phone", kind="victim", battery_pct=77.0, protocol="owntracks",
                              owntracks="alice/phone"), Stationary(P), topics, 1.8e9, rng)
    (em,) = phone.step()
    assert em.topic == "ot/alice/phone" and em.via == "mqtt"
    msg = orjson.loads(em.payload)
    assert msg["_type"] == "location" and msg["tst"] == 1_800_000_000
    assert msg["batt"] == 77 and msg["vel"] == 0 and isinstance(msg["acc"], int)
    assert math.dist((msg["lon"], msg["lat"]), P) < 0.001
    tag = Device(DeviceSpec("T-9", protocol="traccar"), Stationary(P), topics, 1.8e9, rng)
    (em,) = tag.step()
    assert em.via == "traccar" and em.topic == "T-9"
    body = orjson.loads(em.payload)
    assert body["device"] == {"uniqueId": "T-9"}
    assert body["position"]["attributes"]["batteryLevel"] == 90.0
    tag_id, fix = traccar_fix(em.payload)  # what the daemon's endpoint reads
    fix = orjson.loads(fix)
    assert tag_id == "T-9" and fix["bat"] == 90.0 and fix["ts"].startswith("2027-01-15T")


def test_a_scenario_refuses_a_protocol_the_device_cannot_speak(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    path.write_text(SCENARIO.replace('protocol = "traccar"', 'protocol = "owntracks"'))
    with pytest.raises(ScenarioError, match=r"tags\[0\]\.protocol"):
        load_scenario(path)
    path.write_text(SCENARIO.replace('owntracks = "alice/phone"', 'owntracks = "alice"'))
    with pytest.raises(ScenarioError, match=r"victims\[0\]\.owntracks"):
        load_scenario(path)


def test_the_scenario_in_process(tmp_path: Path) -> None:
    scenario = load_scenario(write_scenario(tmp_path))
    result = run_inprocess(scenario)
    assert result.ok, result.summary()


def test_the_scenario_against_the_daemon(tmp_path: Path, broker_url: str) -> None:
    """The phone's fixes reach the daemon only as OwnTracks, the tag's only through
    /ingest/traccar; the proximity with V-OT needs both."""
    scenario = load_scenario(write_scenario(tmp_path))
    ot = unique_prefix()
    daemon = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db",
                         cases=scenario.cases,
                         env={"TAGWATCH_INGEST_CLOCK": "event", "TAGWATCH_FEED_USERS": USERS,
                              "TAGWATCH_INGEST_OWNTRACKS_PREFIX": ot})
    daemon.start()
    try:
        daemon.wait_ready()
        result = asyncio.run(asyncio.wait_for(run_scenario(
            scenario, broker_url, daemon.prefix, speed=300,
            traccar=(f"{daemon.base}/ingest/traccar", INGEST), owntracks_prefix=ot),
            timeout=60))
        assert daemon.metric("tagwatch_rejected_total") == 0
    finally:
        code = daemon.stop()
    assert result.ok, f"{result.summary()}\n--- daemon log tail ---\n{daemon.logs()[-2000:]}"
    (near,) = [a for a in result.alerts if a["type"] == "proximity" and a["state"] == "open"]
    assert near["victim"] == "V-OT" and near["tag"] == "T-OT"
    assert code == 0, daemon.logs()[-2000:]
