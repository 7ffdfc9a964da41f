"""GET /api/cases and the victims-by-status gauge (DESIGN 3.8), through the real daemon:
each case with each victim's protection status and reasons, the tag's last fix age,
quality and battery, the victim device's age; degraded cases first; no phone number,
no coordinate."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx

from tests.daemon_harness import Collector, Publisher, alerts_of, make_daemon
from tests.record_db import record_database

VIEWER = "viewer-secret-token"
USERS = json.dumps([{"name": "w", "role": "viewer",
                     "token_sha256": hashlib.sha256(VIEWER.encode()).hexdigest()}])
TAG_AT = (51.5312, -0.1601)  # far from C-0001's zones
PHONE_AT = (51.5219, -0.1805)  # about 2 km away: no proximity


def test_the_cases_view_and_the_victims_gauge(tmp_path: Path, broker_url: str) -> None:
    with record_database("sqlite", tmp_path) as db:
        d = make_daemon(tmp_path, broker_url, db.url, env={"TAGWATCH_FEED_USERS": USERS})
        col = Collector(broker_url, f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            now = time.time()
            pub.send(f"{d.prefix}/victims/VD-01/fix",
                     {"ts": now - 12, "lat": PHONE_AT[0], "lon": PHONE_AT[1], "acc": 8})
            pub.send(f"{d.prefix}/tags/T-1001/fix",
                     {"ts": now - 10, "lat": TAG_AT[0], "lon": TAG_AT[1], "acc": 6, "bat": 12})
            col.wait_for(lambda _: any(a["type"] == "protection.degraded"
                                       for a in alerts_of(col, d.prefix)), 15, "degraded")
            col.wait_for(lambda _: d.metric("tagwatch_victims", status="degraded") == 1, 15,
                         "the gauge")
            assert d.metric("tagwatch_victims", status="unknown") == 1  # C-0002: T-2002 silent
            assert d.metric("tagwatch_victims", status="protected") == 0
            headers = {"Authorization": f"Bearer {VIEWER}"}
            answer = httpx.get(f"{d.base}/api/cases", headers=headers, timeout=5)
            assert answer.status_code == 200
            cases = answer.json()
            assert [(c["case"], c["status"]) for c in cases] == [
                ("C-0001", "degraded"), ("C-0002", "unknown")]
            (tag,) = cases[0]["tags"]
            assert (tag["tag"], tag["fix_quality"], tag["acc_m"], tag["battery_pct"],
                    tag["battery_low"]) == ("T-1001", "good", 6.0, 12.0, True)
            assert 9 <= tag["last_fix_age_s"] <= 60
            (victim,) = cases[0]["victims"]
            assert (victim["victim"], victim["status"], victim["reasons"], victim["device"],
                    victim["device_coarse"]) == ("V-01", "degraded", ["low_battery"], "device",
                                                 False)
            assert 11 <= victim["device_age_s"] <= 60
            assert cases[1]["victims"][0]["reasons"] == []
            assert cases[1]["tags"][0]["last_fix_age_s"] is None
            text = answer.text
            for secret in ("+4477", "51.53", "51.52", "0.16", "0.18", "VD-01"):
                assert secret not in text, secret
            assert httpx.get(f"{d.base}/api/cases", timeout=5).status_code == 401
            assert d.stop() == 0
        finally:
            d.kill()
            col.close()
            pub.close()
