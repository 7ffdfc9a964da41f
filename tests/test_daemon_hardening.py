"""Hardening through the real daemon (issue 16): publications larger than the broker's
packet limit, oversized Twilio callbacks, acknowledgements that survive a restart,
replayed SMS replies. Real Mosquitto, SQLite and PostgreSQL records, the real twilio
client's signatures."""

from __future__ import annotations

import hashlib
import time
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
AUTH = {"Authorization": f"Bearer {TOKEN}"}
USERS = (
    "[[feed.users]]\n"
    'name = "duty-operator"\nrole = "operator"\n'
    f'token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
)
HOME_2 = (-0.0595, 51.5402)  # inside C-0002's home zone, outside its hole (lon, lat)


def breach_2(t0: float | None = None) -> list[dict]:
    t0 = time.time() - 5 if t0 is None else t0
    return [{"tag": "T-2002", "ts": t0 + i, "lat": HOME_2[1], "lon": HOME_2[0], "acc": 5.0}
            for i in range(2)]


def confirmed(col: Collector, prefix: str, case: str) -> dict:
    col.wait_for(lambda ms: any(b'"confirmed"' in p and f"/alerts/{case}".encode() in t.encode()
                                for t, p, _ in ms), 15, f"{case} confirmed breach")
    return next(a for a in alerts_of(col, prefix, case)
                if a["type"] == "zone.breach" and a["confidence"] == "confirmed")


def test_a_record_larger_than_the_broker_allows_is_kept_not_sent_and_ingest_goes_on(
        tmp_path: Path, mosquitto_factory, record_db: RecordDb) -> None:  # noqa: F811
    broker = mosquitto_factory("max_packet_size 4096\n")
    d = make_daemon(tmp_path, broker.url, record_db.url, extra=USERS,
                    env={"TAGWATCH_BROKER_MAX_PACKET_KB": "4"})
    col = Collector(broker.url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker.url)
    d.start()
    try:
        d.wait_ready()
        for fix in breach_fixes():
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        breach = confirmed(col, d.prefix, "C-0001")
        # 2,000 characters of two UTF-8 bytes each: the acknowledged record is > 4 KiB.
        answer = httpx.post(f"{d.base}/api/alerts/{breach['id']}/ack", headers=AUTH,
                            json={"note": "é" * 2000}, timeout=10)
        assert answer.status_code == 200 and answer.json()["state"] == "acknowledged"
        state = record_db.raw(
            f"SELECT state FROM alert_latest WHERE alert_id = '{breach['id']}'")
        assert state == [("acknowledged",)]
        # Ingest goes on, on the same connection: the next breach alerts over MQTT.
        for fix in breach_2():
            pub.send(f"{d.prefix}/tags/T-2002/fix", fix)
        confirmed(col, d.prefix, "C-0002")
        assert d.metric("tagwatch_publish_too_large_total") == 1
        assert d.metric("tagwatch_broker_reconnects_total") == 0
        assert not [a for a in alerts_of(col, d.prefix) if a["state"] == "acknowledged"]
        assert "publish_too_large" in d.logs()
    finally:
        col.close()
        pub.close()
        d.kill()
