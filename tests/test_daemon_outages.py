"""A broker restart and a 30 s record outage cost no alert; health and metrics say so."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.daemon_harness import (
    Collector,
    Publisher,
    breach_fixes,
    make_daemon,
)

C2_INSIDE = (-0.0590, 51.5403)  # in C-0002's home zone, outside its hole
OUTAGE_S = 30.0


def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)  # polling an HTTP endpoint, with a deadline


def test_broker_restart_mid_stream(tmp_path: Path, mosquitto_factory) -> None:
    broker = mosquitto_factory()
    d = make_daemon(tmp_path, broker.url, f"sqlite://{tmp_path}/record.db")
    col = Collector(broker.url, f"{d.prefix}/alerts/#", persistent=True)
    pub = Publisher(broker.url)
    d.start()
    try:
        d.wait_ready()
        now = time.time()
        for fix in breach_fixes(t0=now - 50):
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        col.wait_for(lambda ms: _breaches(ms) >= 2, 15, "first breach")
        pub.close()
        broker.stop()
        broker.start()
        pub = Publisher(broker.url)
        for i in range(2):
            pub.send(f"{d.prefix}/tags/T-2002/fix", {"ts": now - 40 + 30 * i, "lat": C2_INSIDE[1],
                                                   "lon": C2_INSIDE[0], "acc": 5.0})
        col.wait_for(lambda ms: _breaches(ms, "/alerts/C-0002") >= 2, 30,
                     "breach after the broker restart")
        assert [a["state"] for a in col.json_on("/alerts/C-0001")
                if a["type"] == "zone.breach"] == ["open", "updated"]
        _until(lambda: d.metric("tagwatch_broker_reconnects_total") >= 1, 15, "reconnect")
        assert d.metric("tagwatch_broker_connected") == 1
        assert d.stop() == 0
    finally:
        d.kill()
        col.close()
        pub.close()


def test_record_unavailable_for_30_s(tmp_path: Path, broker_url: str) -> None:
    db = tmp_path / "record.db"
    d = make_daemon(tmp_path, broker_url, f"sqlite://{db}")
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    lock = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        d.wait_ready()
        lock.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        for fix in breach_fixes():
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)

        def reasons() -> list[str]:
            r = d.get("/readyz")
            return [] if r.status_code == 200 else r.json()["reasons"]

        _until(lambda: any(x == "record_unavailable" for x in reasons()), 20,
               "/readyz not ready")
        assert d.metric("tagwatch_record_write_errors_total") >= 1
        assert d.metric("tagwatch_record_available") == 0
        assert col.messages == []  # nothing published before its commit
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - locked_at)))  # the outage lasts
        assert d.get("/readyz").status_code == 503
        lock.execute("ROLLBACK")
        d.wait_ready(20)
        col.wait_for(lambda ms: _breaches(ms) >= 2, 20, "the breach, after the outage")
        assert d.metric("tagwatch_record_write_errors_total") >= 1
        assert d.metric("tagwatch_alerts_total", type="zone.breach") == 2
        logs = d.logs()
        assert logs.count('"event": "record_unavailable"') == 1  # once per outage
        assert '"event": "record_available"' in logs
        assert d.stop() == 0
    finally:
        lock.close()
        d.kill()
        col.close()
        pub.close()


def _breaches(ms: list, where: str = "/alerts/") -> int:
    """zone.breach records among the messages (protection records come with them)."""
    return sum(where in t and json.loads(p)["type"] == "zone.breach" for t, p, _ in ms)
