"""One tag flooding the daemon (issue 16.8), through the real daemon and Mosquitto: the
excess over its rate limit is rejected as rate_limited and counted (one rejection per
10 s recorded and published, not one per message), and another tag's breach in the
middle of the flood still alerts. Not a timing test: the fairness figure is measured by
`tagwatch bench e2e --flood`."""

from __future__ import annotations

import time
from pathlib import Path

from tests.daemon_harness import Collector, Publisher, make_daemon
from tests.record_db import record_database
from tests.test_daemon_poison import Tags, _cases, _confirmed, _send_all

FLOOD = 3000


def test_a_flooding_tag_is_rate_limited_and_another_tags_breach_alerts(
        tmp_path: Path, broker_url: str) -> None:
    with record_database("sqlite", tmp_path) as db:
        d = make_daemon(tmp_path, broker_url, db.url, cases=_cases(tmp_path / "cases"),
                        env={"TAGWATCH_INGEST_TAG_RATE_PER_S": "5",
                             "TAGWATCH_INGEST_TAG_BURST": "50"})
        col = Collector(broker_url, f"{d.prefix}/alerts/#", f"{d.prefix}/rejected/#")
        pub = Publisher(broker_url)
        tags = Tags(signed=False)
        d.start()
        try:
            d.wait_ready()
            flood = [(f"{d.prefix}/tags/T-1/fix", tags.payload(
                {"ts": time.time() - 100 + i * 0.01, "lat": 51.6, "lon": -0.1})) for i in
                range(FLOOD)]
            breach = [(f"{d.prefix}/tags/T-3/fix", p)
                      for p in tags.breach("T-3", time.time() - 5)]
            started = time.monotonic()
            _send_all(pub, flood[:1000] + breach[:1] + flood[1000:2000] + breach[1:]
                      + flood[2000:])
            col.wait_for(lambda _: _confirmed(col, d.prefix, "T-3"), 30, "T-3's breach")
            # messages are taken in arrival order: once T-4's breach after the flood has
            # alerted, every message of the flood has been handled
            _send_all(pub, [(f"{d.prefix}/tags/T-4/fix", p)
                            for p in tags.breach("T-4", time.time() - 5)])
            col.wait_for(lambda _: _confirmed(col, d.prefix, "T-4"), 30, "T-4's breach")
            elapsed = time.monotonic() - started
            limited = d.metric("tagwatch_rejected_total", reason="rate_limited")
            fixes = d.metric("tagwatch_fixes_total")
            assert fixes + limited == FLOOD + 4
            assert 50 <= fixes - 4 <= 50 + 5 * elapsed + 1
            published = [m for m in col.json_on(f"{d.prefix}/rejected/T-1")
                         if m["reason"] == "rate_limited"]
            assert 1 <= len(published) <= elapsed / 10 + 1
            rows = db.raw("SELECT count(*) FROM entries WHERE kind = 'rejected'")
            assert rows[0][0] == len(published)
            assert d.stop() == 0
        finally:
            d.kill()
            col.close()
            pub.close()
