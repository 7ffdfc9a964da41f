"""OwnTracks phones as victim devices (DESIGN 3.1, 3.4), through the real daemon and a
real Mosquitto: with `[ingest] owntracks_prefix` set, `{prefix}/USER/DEVICE` location
messages move the mobile zone of the victim whose case names `owntracks: "USER/DEVICE"`;
other `_type`s are counted and ignored; a coarse fix opens no critical proximity alone."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.brokers import unique_prefix
from tests.daemon_harness import Collector, Publisher, alerts_of, make_daemon
from tests.record_db import record_database

P = (-0.2000, 51.6000)  # the victim, lon/lat; no zone near
M_LAT = 1 / 111_320


def case_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cases"
    folder.mkdir()
    doc = {
        "type": "FeatureCollection",
        "case": {"id": "C-OT", "tags": ["T-OT"], "timezone": "Europe/London",
                 "victims": [{"id": "V-OT", "owntracks": "alice/phone",
                              "mobile_radius_m": 500}]},
        "features": [{"type": "Feature",
                      "geometry": {"type": "Point", "coordinates": [-0.1000, 51.5000]},
                      "properties": {"zone": "home", "kind": "exclusion", "radius_m": 100}}],
    }
    (folder / "C-OT.geojson").write_text(json.dumps(doc))
    return folder


def north(metres: float) -> tuple[float, float]:
    return P[0], P[1] + metres * M_LAT


def location(ts: float, acc: float) -> dict:
    """An OwnTracks location message as the app publishes it."""
    return {"_type": "location", "tid": "al", "tst": int(ts), "lat": P[1], "lon": P[0],
            "acc": acc, "batt": 81, "vel": 18, "cog": 90, "conn": "m", "t": "u"}


def run_owntracks(tmp_path: Path, broker_url: str, acc: float) -> tuple[list[dict], object]:
    """Tag heard far away; the phone's location; the tag 100 m from it. The alerts of C-OT."""
    ot = unique_prefix()
    with record_database("sqlite", tmp_path) as db:
        d = make_daemon(tmp_path, broker_url, db.url, cases=case_dir(tmp_path),
                        env={"TAGWATCH_INGEST_OWNTRACKS_PREFIX": ot})
        col = Collector(broker_url, f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            now = time.time()
            lon, lat = north(2000)
            pub.send(f"{d.prefix}/tags/T-OT/fix", {"ts": now - 30, "lat": lat, "lon": lon})
            col.wait_for(lambda _: alerts_of(col, d.prefix, "C-OT"), 15, "protection record")
            pub.send(f"{ot}/alice/phone", {"_type": "transition", "event": "leave"})
            pub.send(f"{ot}/alice/phone", {"_type": "lwt", "tst": int(now)})
            pub.send(f"{ot}/alice/phone", location(now - 20, acc))
            col.wait_for(lambda _: len(alerts_of(col, d.prefix, "C-OT")) >= 2, 15,
                         "the phone's fix changes the protection status")
            lon, lat = north(100)
            pub.send(f"{d.prefix}/tags/T-OT/fix", {"ts": now - 10, "lat": lat, "lon": lon})
            col.wait_for(lambda _: any(a["type"] == "proximity"
                                       for a in alerts_of(col, d.prefix, "C-OT")), 15,
                         "proximity")
            assert d.metric("tagwatch_owntracks_ignored_total", type="transition") == 1
            assert d.metric("tagwatch_owntracks_ignored_total", type="lwt") == 1
            assert d.metric("tagwatch_rejected_total") == 0
            alerts = alerts_of(col, d.prefix, "C-OT")
            assert d.stop() == 0
            return alerts, d
        finally:
            d.kill()
            col.close()
            pub.close()


def test_an_owntracks_location_moves_the_mobile_zone(tmp_path: Path, broker_url: str) -> None:
    alerts, _ = run_owntracks(tmp_path, broker_url, acc=10)
    assert [(a["type"], a["state"]) for a in alerts[:3]] == [
        ("protection.degraded", "open"),  # the tag is heard; the phone has not reported
        ("protection.degraded", "resolved"),
        ("protection.restored", "open"),
    ]
    proximity = [a for a in alerts if a["type"] == "proximity"]
    assert [(a["state"], a["severity"], a["victim"], a["zone"]) for a in proximity] == [
        ("open", "critical", "V-OT", None)]
    assert 90 <= proximity[0]["distance_m"] <= 110


def test_a_coarse_owntracks_fix_opens_no_critical_proximity(
        tmp_path: Path, broker_url: str) -> None:
    alerts, _ = run_owntracks(tmp_path, broker_url, acc=300)
    assert [(a["type"], a["state"]) for a in alerts[:2]] == [
        ("protection.degraded", "open"), ("protection.degraded", "updated")]
    assert "device_coarse" in alerts[1]["detail"]
    proximity = [a for a in alerts if a["type"] == "proximity"]
    assert [(a["state"], a["severity"], a["confidence"]) for a in proximity] == [
        ("open", "warning", "probable")]
