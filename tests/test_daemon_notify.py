"""Notifications through the daemon, against the local Twilio server: a confirmed breach
gives one SMS within a second; `tagwatch alerts ack` acknowledges it in the record."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tagwatch.ingest.embedded_broker import free_port
from tests.daemon_harness import (
    Collector,
    Publisher,
    RecordDb,
    breach_fixes,
    make_daemon,
    record_db,  # noqa: F401  (fixture)
)
from tests.test_daemon_hardening import wait_until
from tests.twilio_server import TwilioServer

SID = "AC" + "1" * 32


def _sms_done_recorded(record_db: RecordDb, alert_id: str) -> bool:  # noqa: F811
    return bool(record_db.raw("SELECT 1 FROM outbox WHERE channel = 'sms' AND status = 'done' "
                              f"AND alert_id = '{alert_id}'"))


def test_breach_texts_the_victim_once_and_the_cli_acknowledges(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    with TwilioServer(account_sid=SID, auth_token="tok") as twilio:
        extra = (f'[notify.twilio]\naccount_sid = "{SID}"\nfrom = "+447700900000"\n'
                 f'api_base = "{twilio.url}"\n')
        d = make_daemon(tmp_path, broker_url, record_db.url, extra=extra,
                        env={"TWILIO_AUTH_TOKEN": "tok"})
        col = Collector(broker_url, f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            first, second = breach_fixes()
            pub.send(f"{d.prefix}/tags/T-1001/fix", first)
            pub.send(f"{d.prefix}/tags/T-1001/fix", second)
            confirmed_at = time.monotonic()
            (sms,) = twilio.wait_for(1, timeout=5, path="Messages.json")
            assert sms.at - confirmed_at <= 1.0
            assert sms.form["To"] == "+447700900123" and sms.form["From"] == "+447700900000"
            assert "51.5" not in sms.form["Body"] and "-0.12" not in sms.form["Body"]

            col.wait_for(lambda ms: sum(json.loads(p)["type"] == "zone.breach"
                                        for _, p, _ in ms) >= 2, 10, "breach records")
            alert_id = col.json_on("/alerts/")[0]["id"]
            done = d.cli("alerts", "ack", alert_id, "--by", "duty-operator", "--note", "seen")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["state"] == "acknowledged"
            state = record_db.raw(f"SELECT state FROM alert_latest WHERE alert_id = '{alert_id}'")
            assert state == [("acknowledged",)]
            missing = d.cli("alerts", "ack", "ffffffffffff")
            assert missing.returncode == 2 and "no such alert" in missing.stderr
            assert "no SMS or calls" not in d.logs()
            assert len(twilio.seen) == 1  # one SMS per episode, no duplicate
            assert d.stop() == 0
        finally:
            d.kill()
            col.close()
            pub.close()


def test_a_signed_sms_reply_from_the_victim_acknowledges_and_a_forged_one_is_refused(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    from twilio.request_validator import RequestValidator

    with TwilioServer(account_sid=SID, auth_token="tok") as twilio:
        port = free_port()
        public = f"http://127.0.0.1:{port}"
        extra = (f'[notify.twilio]\naccount_sid = "{SID}"\nfrom = "+447700900000"\n'
                 f'api_base = "{twilio.url}"\npublic_url = "{public}"\n')
        d = make_daemon(tmp_path, broker_url, record_db.url, extra=extra,
                        env={"TWILIO_AUTH_TOKEN": "tok"}, port=port)
        col = Collector(broker_url, f"{d.prefix}/alerts/#")
        pub = Publisher(broker_url)
        d.start()
        try:
            d.wait_ready()
            for fix in breach_fixes():
                pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
            (sms,) = twilio.wait_for(1, timeout=5, path="Messages.json")
            assert sms.form["StatusCallback"].startswith(f"{public}/twilio/status?alert=")
            col.wait_for(lambda ms: sum(json.loads(p)["type"] == "zone.breach"
                                        for _, p, _ in ms) >= 2, 10, "breach records")
            alert_id = col.json_on("/alerts/")[0]["id"]
            # A reply answers an SMS the record shows Twilio took (done): the stub has
            # the message before the daemon has recorded Twilio's answer, so wait for that.
            wait_until("the SMS done", lambda: _sms_done_recorded(record_db, alert_id))

            params = {"From": "+447700900123", "To": "+447700900000", "Body": "OK",
                      "MessageSid": "SM" + "2" * 32, "AccountSid": SID}
            url = f"{public}/twilio/sms"
            forged = httpx.post(url, data=params, headers={"X-Twilio-Signature": "forged"})
            assert forged.status_code == 403
            signature = RequestValidator("tok").compute_signature(url, params)
            reply = httpx.post(url, data=params, headers={"X-Twilio-Signature": signature})
            assert reply.status_code == 200, reply.text
            state = record_db.raw(f"SELECT state FROM alert_latest WHERE alert_id = '{alert_id}'")
            assert state == [("acknowledged",)]
        finally:
            d.kill()
            col.close()
            pub.close()
