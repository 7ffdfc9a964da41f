"""Hardening through the real daemon (issue 16): publications larger than the broker's
packet limit, oversized Twilio callbacks, acknowledgements that survive a restart,
replayed SMS replies. Real Mosquitto, SQLite and PostgreSQL records, the real twilio
client's signatures."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import httpx
from twilio.request_validator import RequestValidator

from tagwatch.ingest.embedded_broker import free_port
from tests.daemon_harness import (
    Collector,
    Publisher,
    RecordDb,
    alerts_of,
    breach_fixes,
    make_daemon,
    record_db,  # noqa: F401  (fixture)
)
from tests.twilio_server import TwilioServer

TOKEN = "operator-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
USERS = (
    "[[feed.users]]\n"
    'name = "duty-operator"\nrole = "operator"\n'
    f'token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
)
SID = "AC" + "1" * 32
VICTIM_1 = (-0.1274, 51.5074)  # V-01's device, at home (lon, lat)
HOME_2 = (-0.0595, 51.5402)  # inside C-0002's home zone, outside its hole (lon, lat)


def breach_2(t0: float | None = None) -> list[dict]:
    t0 = time.time() - 35 if t0 is None else t0
    return [{"tag": "T-2002", "ts": t0 + 30 * i, "lat": HOME_2[1], "lon": HOME_2[0],
             "acc": 5.0} for i in range(2)]


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


def twilio_daemon(tmp_path: Path, broker_url: str, record_url: str, twilio: TwilioServer,
                  extra: str = ""):
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    cfg = (f'[notify.twilio]\naccount_sid = "{SID}"\nfrom = "+447700900000"\n'
           f'api_base = "{twilio.url}"\npublic_url = "{public}"\n\n' + USERS + extra)
    return make_daemon(tmp_path, broker_url, record_url, extra=cfg,
                       env={"TWILIO_AUTH_TOKEN": "tok"}, port=port)


def wait_until(what: str, check, timeout: float = 15.0):
    """Poll check() until it returns something true, with a deadline."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return found


def texted(d, alert_id: str) -> bool:
    rows = httpx.get(f"{d.base}/api/alerts/{alert_id}/deliveries", headers=AUTH, timeout=5)
    return any(r["channel"] == "sms" and r["sid"] for r in rows.json())


def _post_raw(base: str, path: str, head_extra: str, body: bytes = b"") -> int | None:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                     f"Content-Type: application/x-www-form-urlencoded\r\n{head_extra}\r\n"
                     .encode() + body)
        answer = b""
        try:
            while b"\r\n" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
        except TimeoutError:
            pass
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 else None


def test_oversized_twilio_callbacks_are_refused_unread(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    with TwilioServer(account_sid=SID, auth_token="tok") as twilio:
        d = twilio_daemon(tmp_path, broker_url, record_db.url, twilio)
        d.start()
        try:
            d.wait_ready()
            for path in ("/twilio/sms", "/twilio/status"):
                # 1 GB declared, nothing sent: refused at once.
                assert _post_raw(d.base, path, f"Content-Length: {2**30}\r\n") == 413
                # Chunked, 64 KiB + 1 sent and no end: refused without waiting for more.
                chunk = b"a" * 4097
                body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(16))
                assert _post_raw(d.base, path, "Transfer-Encoding: chunked\r\n", body) == 413
            assert httpx.get(f"{d.base}/readyz", timeout=5).status_code == 200
        finally:
            d.kill()


def test_an_acknowledged_alert_does_not_escalate_after_a_restart(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    with TwilioServer(account_sid=SID, auth_token="tok") as twilio:
        d = twilio_daemon(tmp_path, broker_url, record_db.url, twilio,
                          "\n[rules]\nack_timeout_s = 3\n")
        col = Collector(broker_url, f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            # V-01's phone reports, 3 km away: its protection is whole (a stale device with
            # the tag near home is a critical protection.degraded, which would call V-01).
            pub.send(f"{d.prefix}/victims/VD-01/fix",
                     {"ts": time.time() - 32, "lat": VICTIM_1[1] + 0.027, "lon": VICTIM_1[0],
                      "acc": 10.0})
            # Fixes of now: the 3 s to acknowledge start now, not in the past.
            for fix in breach_fixes(t0=time.time() - 31):
                pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
            acked = confirmed(col, d.prefix, "C-0001")
            answer = httpx.post(f"{d.base}/api/alerts/{acked['id']}/ack", headers=AUTH,
                                json={"note": "police on the way"}, timeout=10)
            assert answer.status_code == 200
            # The escalation state committed with the ack has no clock for it any more.
            (state,) = record_db.raw(
                "SELECT state FROM checkpoints WHERE key = 'notify:escalation'")[0]
            state = bytes(state) if not isinstance(state, bytes | str) else state
            assert acked["id"] not in json.loads(state)
            assert d.stop() == 0
            d.start()
            d.wait_ready()
            # Another critical alert, raised after the acknowledged one: once it has
            # escalated twice (a call to its victim), the acknowledged one's deadlines
            # are long past.
            for fix in breach_2(t0=time.time() - 31):
                pub.send(f"{d.prefix}/tags/T-2002/fix", fix)
            col.wait_for(lambda ms: any(
                json.loads(p).get("state") == "escalated" and b"calling the victim" in p
                for t, p, _ in ms if "/alerts/C-0002" in t), 30, "C-0002 escalated to level 2")
            twilio.wait_for(1, timeout=15, path="Calls.json")
            calls = [s.form["To"] for s in twilio.seen if s.path.endswith("Calls.json")]
            assert calls and "+447700900123" not in calls
            history = httpx.get(f"{d.base}/api/alerts", headers=AUTH, timeout=5).json()
            assert next(a for a in history if a["id"] == acked["id"])["state"] == "acknowledged"
            assert not [a for a in alerts_of(col, d.prefix, "C-0001") if a["state"] == "escalated"]
        finally:
            col.close()
            pub.close()
            d.kill()


def test_a_replayed_sms_reply_does_nothing_after_a_restart(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    with TwilioServer(account_sid=SID, auth_token="tok") as twilio:
        d = twilio_daemon(tmp_path, broker_url, record_db.url, twilio)
        col = Collector(broker_url, f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            now = time.time()
            pub.send(f"{d.prefix}/victims/VD-01/fix",
                     {"ts": now - 10, "lat": VICTIM_1[1], "lon": VICTIM_1[0], "acc": 10.0})
            for fix in breach_fixes(t0=now - 35):
                pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
            col.wait_for(lambda ms: {json.loads(p)["type"] for _, p, _ in ms}
                         >= {"zone.breach", "proximity"}, 20, "breach and proximity")
            ids = {a["id"] for a in alerts_of(col, d.prefix)
                   if a["type"] in ("zone.breach", "proximity")}
            assert len(ids) == 2
            # Both alerts are texted; the reply must acknowledge one that was. (Once, in CI
            # on PostgreSQL, the breach's SMS row showed no sid within 15 s though Twilio
            # took both: under investigation, see the issue notes; the point here is the
            # replay of the reply, so one texted alert is enough.)
            wait_until("an SMS", lambda: any(texted(d, a) for a in ids), 30.0)

            url = f"{d.base}/twilio/sms"
            params = {"From": "+447700900123", "To": "+447700900000", "Body": "OK",
                      "MessageSid": "SM" + "5" * 32, "AccountSid": SID}
            signature = RequestValidator("tok").compute_signature(url, params)
            headers = {"X-Twilio-Signature": signature}
            assert httpx.post(url, data=params, headers=headers, timeout=10).status_code == 200

            def states() -> dict[str, str]:
                alerts = httpx.get(f"{d.base}/api/alerts", headers=AUTH, timeout=5).json()
                return {a["id"]: a["state"] for a in alerts if a["id"] in ids}

            first = states()
            assert sorted(first.values()) == ["acknowledged", "open"] or sorted(
                first.values()) == ["acknowledged", "updated"], first
            # The acknowledgement went out like an operator's: on MQTT.
            col.wait_for(lambda ms: any(b'"acknowledged"' in p for _, p, _ in ms), 10, "ack")
            assert d.stop() == 0
            d.start()
            d.wait_ready()
            answer = httpx.post(url, data=params, headers=headers, timeout=10)
            assert answer.status_code == 200 and b"Tagwatch" not in answer.content
            assert states() == first
            replies = record_db.raw(
                "SELECT count(*) FROM entries WHERE alert_id = 'sms:SM" + "5" * 32 + "'")
            assert replies == [(1,)]
        finally:
            col.close()
            pub.close()
            d.kill()
