"""Traccar's JSON position forwarding (DESIGN 3.1) through the real daemon and Mosquitto:
POST /ingest/traccar with an ingest user's token is a tag fix, answered 200 once
committed, giving the alerts the same fixes give over MQTT; bad input is refused 4xx
with a reason; the ingest role may do nothing else."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx

from tests.daemon_harness import HOME, Collector, Publisher, alerts_of, make_daemon
from tests.record_db import record_database

INGEST, OPERATOR = "traccar-secret-token", "operator-secret-token"
USERS = json.dumps([
    {"name": name, "role": role, "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
    for name, role, token in (("traccar", "ingest", INGEST), ("op", "operator", OPERATOR))
])
M_LAT = 1 / 111_320


def fixes(t0: float) -> list[dict]:
    """150 m north of C-0001's home (a warning), then inside it with a low battery."""
    out = [{"ts": t0, "lat": HOME[1] + 150 * M_LAT, "lon": HOME[0], "acc": 6.0,
            "spd": 1.2, "hdg": 180.0, "bat": 40.0}]
    out += [{"ts": t0 + 10 * k, "lat": HOME[1] + 4 * k * M_LAT, "lon": HOME[0], "acc": 5.0,
             "spd": 0.0, "hdg": 180.0, "bat": 12.0} for k in (1, 2, 3)]
    return out


def traccar_body(fix: dict, tag: str = "T-1001") -> dict:
    """The body Traccar's PositionForwarderJson posts for this fix."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(fix["ts"]))
    ms = f"{fix['ts'] % 1:.3f}"[1:]
    return {
        "position": {"id": 1, "deviceId": 7, "protocol": "gt06", "serverTime": when + ms + "+00:00",
                     "deviceTime": when + ms + "+00:00", "fixTime": when + ms + "+00:00",
                     "outdated": False, "valid": True, "latitude": fix["lat"],
                     "longitude": fix["lon"], "altitude": 12.0, "speed": fix["spd"] / (1852 / 3600),
                     "course": fix["hdg"], "address": None, "accuracy": fix["acc"],
                     "network": None, "geofenceIds": None,
                     "attributes": {"batteryLevel": fix["bat"], "motion": False, "sat": 9}},
        "device": {"id": 7, "name": "bracelet", "uniqueId": tag, "status": "online",
                   "disabled": False, "lastUpdate": when, "positionId": 1, "groupId": 0,
                   "phone": None, "model": None, "contact": None, "category": None,
                   "attributes": {}},
    }


def run(tmp_path: Path, broker_url: str, name: str, over_traccar: bool,
        t0: float, want: int | None) -> tuple[list[dict], list[httpx.Response]]:
    answers = []
    (tmp_path / name).mkdir()
    with record_database("sqlite", tmp_path / name) as db:
        d = make_daemon(tmp_path, broker_url, db.url, name=name,
                        env={"TAGWATCH_FEED_USERS": USERS})
        col = Collector(broker_url, f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            for fix in fixes(t0):
                if over_traccar:
                    answers.append(httpx.post(
                        f"{d.base}/ingest/traccar", json=traccar_body(fix), timeout=10,
                        headers={"Authorization": f"Bearer {INGEST}"}))
                else:
                    pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
            # Every fix committed, then every alert record committed with them published.
            col.wait_for(lambda _: d.metric("tagwatch_fixes_total") >= 4, 15, "4 fixes")
            [(n,)] = db.raw("SELECT count(*) FROM entries WHERE kind = 'alert'")
            assert want is None or n == want
            col.wait_for(lambda _: len(alerts_of(col, d.prefix)) >= n, 15, "the alerts")
            alerts = alerts_of(col, d.prefix)
            if over_traccar:
                answers += check_refusals(d.base)
            assert d.stop() == 0
            return alerts, answers
        finally:
            d.kill()
            col.close()
            pub.close()


def check_refusals(base: str) -> list[httpx.Response]:
    url = f"{base}/ingest/traccar"
    ingest = {"Authorization": f"Bearer {INGEST}"}
    good = traccar_body({"ts": time.time() - 1, "lat": 51.6, "lon": -0.2, "acc": 5.0,
                         "spd": 0.0, "hdg": 0.0, "bat": 80.0})
    out_of_range = json.loads(json.dumps(good))
    out_of_range["position"]["latitude"] = 200.0
    cases = [
        (httpx.post(url, json=good), 401, "no bearer token"),
        (httpx.post(url, json=good, headers={"Authorization": f"Bearer {OPERATOR}"}), 403,
         "'operator'"),
        (httpx.get(f"{base}/api/alerts", headers=ingest), 403, "only POST /ingest/traccar"),
        (httpx.post(url, content=b"{not json", headers=ingest), 400, "not JSON"),
        (httpx.post(url, json={"position": {}}, headers=ingest), 400, "must both be objects"),
        (httpx.post(url, json=traccar_body(good_fix := {
            "ts": time.time() - 1, "lat": 51.6, "lon": -0.2, "acc": 5.0, "spd": 0.0,
            "hdg": 0.0, "bat": 80.0}, tag="T/../x"), headers=ingest), 400, "uniqueId"),
        (httpx.post(url, json=traccar_body(good_fix, tag="T-404"), headers=ingest), 422,
         "unknown_tag"),
        (httpx.post(url, json=out_of_range, headers=ingest), 422, "out_of_range"),
        (httpx.post(url, content=b"[" * 70_000, headers=ingest), 413, ""),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (response.status_code, response.text)
        assert words in response.text, response.text
    return []


def test_a_traccar_position_gives_the_alerts_of_the_same_fix_over_mqtt(
        tmp_path: Path, broker_url: str) -> None:
    t0 = time.time() - 30
    mqtt, _ = run(tmp_path, broker_url, "mqtt", False, t0, None)
    traccar, answers = run(tmp_path, broker_url, "traccar", True, t0, len(mqtt))
    assert [a.status_code for a in answers] == [200] * 4
    assert all(a.json()["accepted"] == 1 for a in answers)

    def shape(alerts: list[dict]) -> list[tuple]:
        return sorted((a["id"], a["type"], a["state"], a["severity"], a["zone"], a["ts"],
                       a["confidence"]) for a in alerts)

    assert shape(traccar) == shape(mqtt)
    assert {"zone.warning", "zone.breach", "tag.battery_low"} <= {a["type"] for a in mqtt}


def test_traccar_positions_share_the_tags_rate_limit_with_mqtt(
        tmp_path: Path, broker_url: str) -> None:
    """The per-tag limit (DESIGN 3.2 rate_limited) is one bucket a tag whichever way its
    fixes come: MQTT fixes spend it, then Traccar's POSTs over it are answered 429 with
    the reason, counted in the same metric, and one of them is recorded as a rejection.
    (POST /ingest/traccar used to bypass the limit: every POST was 200.)"""
    limit = {"TAGWATCH_FEED_USERS": USERS, "TAGWATCH_INGEST_TAG_RATE_PER_S": "0.01",
             "TAGWATCH_INGEST_TAG_BURST": "3"}
    with record_database("sqlite", tmp_path) as db:
        d = make_daemon(tmp_path, broker_url, db.url, env=limit)
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            t0 = time.time() - 60
            for k in range(3):  # the whole burst, over MQTT
                pub.send(f"{d.prefix}/tags/T-1001/fix",
                         {"ts": t0 + 10 * k, "lat": 51.6, "lon": -0.2, "acc": 5.0})
            deadline = time.monotonic() + 15
            while d.metric("tagwatch_fixes_total") < 3:
                assert time.monotonic() < deadline, "the 3 MQTT fixes were not committed"
                time.sleep(0.05)
            answers = [httpx.post(f"{d.base}/ingest/traccar", timeout=10,
                                  headers={"Authorization": f"Bearer {INGEST}"},
                                  json=traccar_body({"ts": t0 + 40 + k, "lat": 51.6,
                                                     "lon": -0.2, "acc": 5.0, "spd": 0.0,
                                                     "hdg": 0.0, "bat": 80.0}))
                       for k in range(3)]
            assert [a.status_code for a in answers] == [429] * 3, [a.text for a in answers]
            assert all("rate_limited" in a.text for a in answers)
            assert d.metric("tagwatch_rejected_total", reason="rate_limited") == 3
            assert d.metric("tagwatch_fixes_total") == 3
            bodies = [json.loads(b) for (b,) in db.raw(
                "SELECT body FROM entries WHERE kind = 'rejected'")]
            assert [(b["source"], b["reason"]) for b in bodies] == [("T-1001", "rate_limited")]
            assert d.stop() == 0
        finally:
            d.kill()
            pub.close()
