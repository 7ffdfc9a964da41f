"""The operator feed inside the real daemon: a breach fix over MQTT reaches the alert
list and the event stream; an operator's acknowledgement is recorded and published."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import httpx

from tests.daemon_harness import (
    Collector,
    Publisher,
    RecordDb,
    alerts_of,
    breach_fixes,
    make_daemon,
    record_db,  # noqa: F401  (fixture)
)

TOKEN = "operator-token-for-tests"
USERS = (
    "[[feed.users]]\n"
    'name = "duty-operator"\nrole = "operator"\n'
    f'token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
)


def _first_event(url: str, got: list, ready: threading.Event, done: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("GET", url, headers=headers, timeout=20) as response:
        ready.set()
        for line in response.iter_lines():
            if line.startswith("data:"):
                got.append(json.loads(line[5:]))
                done.set()
                return


def test_breach_reaches_the_feed_and_an_ack_is_recorded_and_published(
    tmp_path: Path, broker_url: str, record_db: RecordDb  # noqa: F811
) -> None:
    d = make_daemon(tmp_path, broker_url, record_db.url, extra=USERS)
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        events: list = []
        listening, first = threading.Event(), threading.Event()
        stream = threading.Thread(
            target=_first_event, args=(f"{d.base}/api/events", events, listening, first),
            daemon=True)
        stream.start()
        assert listening.wait(10)
        for fix in breach_fixes():
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        assert first.wait(5), "no alert on the event stream within 5 s of the breach"
        assert events[0]["type"] == "zone.breach"

        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{d.base}/api/alerts", timeout=5).status_code == 401
        col.wait_for(lambda ms: any(b"confirmed" in m[1] for m in ms), timeout=10)
        listed = httpx.get(f"{d.base}/api/alerts?state=open", headers=auth, timeout=5).json()
        breach = next(a for a in listed if a["type"] == "zone.breach")
        assert breach["confidence"] == "confirmed"

        answer = httpx.post(f"{d.base}/api/alerts/{breach['id']}/ack", headers=auth,
                            json={"note": "police informed"}, timeout=5)
        assert answer.status_code == 200 and answer.json()["state"] == "acknowledged"
        col.wait_for(
            lambda ms: any(b'"acknowledged"' in m[1] for m in ms), timeout=10)
        acked = [a for a in alerts_of(col, d.prefix) if a["state"] == "acknowledged"]
        assert acked and acked[0]["id"] == breach["id"]
        actions = record_db.raw("SELECT body FROM entries WHERE kind = 'action'")
        assert any("duty-operator" in str(row[0]) and "police informed" in str(row[0])
                   for row in actions)
    finally:
        col.close()
        pub.close()
        d.stop()
