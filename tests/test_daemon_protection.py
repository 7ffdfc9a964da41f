"""Protection notices through the real daemon, Mosquitto and the local Twilio server
(DESIGN 3.3, 3.4): a silent tag raises protection.degraded for its victim with the
reason; the victim, who opted in with notify_degraded, gets one SMS after
degraded_notify_s; the daemon restarts; the tag reports again: protection.restored and
one more SMS. Nothing is sent twice across the restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.daemon_harness import Collector, Publisher, alerts_of, make_daemon
from tests.record_db import record_database
from tests.twilio_server import TwilioServer

SID = "AC" + "2" * 32
FAR = (51.5600, -0.2400)  # far from the case's zone


def case_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cases"
    folder.mkdir()
    doc = {
        "type": "FeatureCollection",
        "case": {"id": "C-PN", "tags": ["T-PN"], "timezone": "Europe/London",
                 "victims": [{"id": "V-PN", "phone": "+447700900777",
                              "notify_degraded": True}]},
        "features": [{"type": "Feature",
                      "geometry": {"type": "Point", "coordinates": [-0.1000, 51.5000]},
                      "properties": {"zone": "home", "kind": "exclusion", "radius_m": 100}}],
    }
    (folder / "C-PN.geojson").write_text(json.dumps(doc))
    return folder


def test_degraded_and_restored_notices_survive_a_restart_without_repeats(
        tmp_path: Path, broker_url: str) -> None:
    with TwilioServer(account_sid=SID, auth_token="tok") as twilio, \
            record_database("sqlite", tmp_path) as db:
        extra = (f'[notify.twilio]\naccount_sid = "{SID}"\nfrom = "+447700900000"\n'
                 f'api_base = "{twilio.url}"\n\n[rules]\nno_comms_s = 2\n'
                 f"degraded_notify_s = 1\n")
        d = make_daemon(tmp_path, broker_url, db.url, cases=case_dir(tmp_path), extra=extra,
                        env={"TWILIO_AUTH_TOKEN": "tok"})
        col = Collector(broker_url, f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            pub.send(f"{d.prefix}/tags/T-PN/fix",
                     {"ts": time.time(), "lat": FAR[0], "lon": FAR[1], "acc": 6})
            (first,) = twilio.wait_for(1, timeout=20, path="Messages.json")
            degraded = [a for a in alerts_of(col, d.prefix, "C-PN")
                        if a["type"] == "protection.degraded"]
            assert [(a["state"], a["severity"], a["victim"], a["zone"]) for a in degraded] == [
                ("open", "warning", "V-PN", None)]
            assert "no_comms" in degraded[0]["detail"]
            assert first.form["To"] == "+447700900777"
            assert "protection is reduced" in first.form["Body"]
            assert d.stop() == 0

            d.start()  # the same config, record and broker session
            d.wait_ready()
            pub.send(f"{d.prefix}/tags/T-PN/fix",
                     {"ts": time.time(), "lat": FAR[0], "lon": FAR[1], "acc": 6})
            both = twilio.wait_for(2, timeout=20, path="Messages.json")
            assert "working normally again" in both[1].form["Body"]
            col.wait_for(lambda _: any(a["type"] == "protection.restored"
                                       for a in alerts_of(col, d.prefix, "C-PN")), 15,
                         "protection.restored")
            # Everything after the restore is committed with it: wait for a tick's worth
            # of work (the gauge is refreshed after each tick) before counting.
            col.wait_for(lambda _: d.metric("tagwatch_victims", status="protected") == 1, 15,
                         "the gauge")
            assert d.stop() == 0
            sms = [s for s in twilio.seen if "Messages.json" in s.path]
            assert len(sms) == 2, [s.form["Body"] for s in sms]
            for s in sms:
                assert "51.56" not in s.form["Body"] and "0.24" not in s.form["Body"]
        finally:
            d.kill()
            col.close()
            pub.close()
