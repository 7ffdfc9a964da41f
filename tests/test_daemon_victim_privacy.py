"""No rejected value of a victim's message is quoted (issue 16.6), through the real daemon:
not on the rejected topic, not in the record, not in the log. A victim fix with its
position as strings was rejected with the values in `detail`; a victim device publishing
on the tags path had its whole payload published."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.daemon_harness import Collector, Publisher, alerts_of, breach_fixes, make_daemon
from tests.record_db import record_database

LAT, LON = "51.51234", "-0.14321"  # a victim's position (C-0001's victim device is VD-01)


def test_a_victim_message_is_rejected_without_any_of_its_values(
        tmp_path: Path, broker_url: str) -> None:
    with record_database("sqlite", tmp_path) as db:
        d = make_daemon(tmp_path, broker_url, db.url)
        col = Collector(broker_url, f"{d.prefix}/rejected/#", f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            now = time.time()
            pub.send(f"{d.prefix}/victims/VD-01/fix", {"ts": now - 5, "lat": LAT, "lon": LON})
            pub.send(f"{d.prefix}/tags/VD-01/fix", {"ts": now - 4, "lat": float(LAT),
                                                     "lon": float(LON), "tag": "VD-01"})
            for fix in breach_fixes():
                pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
            col.wait_for(lambda ms: sum("/rejected/" in t for t, _, _ in ms) >= 2, 15,
                         "two rejections")
            col.wait_for(lambda _: len(alerts_of(col, d.prefix)) >= 2, 15, "the breach")
            rejected = col.json_on(f"{d.prefix}/rejected/VD-01")
            assert [m["reason"] for m in rejected] == ["wrong_type", "unknown_tag"]
            assert "lat" in rejected[0]["detail"] and "lon" in rejected[0]["detail"]
            bodies = [b for (b,) in db.raw("SELECT body FROM entries WHERE kind = 'rejected'")]
            assert len(bodies) == 2
            for text in [json.dumps(m) for m in rejected] + bodies + [d.logs()]:
                assert LAT[:6] not in text and LON[:6] not in text, text
            assert all(m["payload"] == "" for m in rejected)
            assert d.stop() == 0
        finally:
            d.kill()
            col.close()
            pub.close()
