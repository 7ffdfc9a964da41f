"""The outbox dispatcher through the real twilio client against a local Twilio server."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import pytest

from tagwatch.config import PoliceConfig, TwilioConfig
from tagwatch.notify import texts, webhook
from tagwatch.notify.dispatcher import Dispatcher, DispatchSettings
from tagwatch.notify.policy import PolicySettings, SmsLedger, deliveries_for
from tagwatch.notify.twilio_channel import TwilioChannel
from tagwatch.record import Batch, Entry, Record
from tests.test_notify_policy import CASE, PHONES, alert
from tests.twilio_server import Answer, TwilioServer

SID, TOKEN, FROM = "AC" + "1" * 32, "secret-token", "+447700900000"
FAST = DispatchSettings(base_delay_s=0.05, max_delay_s=0.2, poll_s=0.05,
                        status_callback_url="https://tagwatch.example/twilio/status")
POLICY = PolicySettings(sms_enabled=True, police_enabled=True)


@pytest.fixture
def server():
    with TwilioServer(SID, TOKEN) as srv:
        yield srv


@pytest.fixture
def record_url(tmp_path):
    return f"sqlite:///{tmp_path}/record.db"


def channel(server: TwilioServer, timeout_s: float = 2.0) -> TwilioChannel:
    return TwilioChannel(TwilioConfig(SID, FROM, server.url, TOKEN), timeout_s=timeout_s)


def commit(record: Record, rec: dict, police: bool = False) -> None:
    """What the daemon does: the alert record and its deliveries in one commit."""
    settings = POLICY if police else PolicySettings(sms_enabled=True)
    items = deliveries_for(rec, CASE, settings, SmsLedger())
    entry = Entry(f"case:{rec['case']}", "alert", rec, tag=rec["tag"], event_ts=time.time(),
                  alert_id=rec["id"])
    record.commit(Batch(entries=[entry], outbox=items), time.time())


async def run_until(dispatcher: Dispatcher, server: TwilioServer, n: int,
                    timeout: float = 10.0, path: str = ".json") -> list:
    """Run the dispatcher until n requests reached the server and their rows settled."""
    task = asyncio.create_task(dispatcher.run())
    try:
        seen = await asyncio.to_thread(server.wait_for, n, timeout, path)
        await dispatcher.idle()
    finally:
        dispatcher.stop()
        await task
    return seen


def dispatcher(record: Record, server: TwilioServer, failures: list | None = None,
               settings: DispatchSettings = FAST, timeout_s: float = 2.0,
               police: webhook.PoliceWebhook | None = None) -> Dispatcher:
    sink = failures if failures is not None else []
    return Dispatcher(record, twilio=channel(server, timeout_s), police=police,
                      on_failure=sink.append, settings=settings)


def test_breach_sends_one_sms_to_the_victim(server, record_url):
    record = Record.open(record_url)
    commit(record, alert())
    (sms,) = asyncio.run(run_until(dispatcher(record, server), server, 1))
    assert sms.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert sms.form["To"] == PHONES["V-01"] and sms.form["From"] == FROM
    assert texts.reference(alert()["id"]) in sms.form["Body"]
    assert sms.form["StatusCallback"].startswith("https://tagwatch.example/twilio/status?alert=")
    assert sms.answered == 201 and record.outbox_depth() == 0


def test_500_then_success_is_delivered_once(server, record_url):
    record = Record.open(record_url)
    commit(record, alert())
    server.script(Answer(500))
    d = dispatcher(record, server)
    first, second = asyncio.run(run_until(d, server, 2))
    assert (first.answered, second.answered) == (500, 201)
    assert first.form["Body"] == second.form["Body"]
    assert record.outbox_depth() == 0 and asyncio.run(d.start_due()) == 0
    assert len(server.seen) == 2


def test_429_storm_honours_retry_after(server, record_url):
    record = Record.open(record_url)
    commit(record, alert())
    server.script(Answer(429, retry_after=1), Answer(429, retry_after=1))
    seen = asyncio.run(run_until(dispatcher(record, server), server, 3))
    assert [s.answered for s in seen] == [429, 429, 201]
    gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
    assert all(gap >= 1.0 for gap in gaps), gaps
    assert record.outbox_depth() == 0


def test_a_hung_request_times_out_and_is_resent_with_the_same_reference(server, record_url):
    record = Record.open(record_url)
    commit(record, alert())
    server.script(Answer.hang(5))
    seen = asyncio.run(run_until(dispatcher(record, server, timeout_s=1.0), server, 2))
    assert seen[0].form["Body"] == seen[1].form["Body"]
    assert texts.reference(alert()["id"]) in seen[1].form["Body"]
    assert record.outbox_depth() == 0


def test_bounded_attempts_become_an_operators_alert(server, record_url):
    record, failures = Record.open(record_url), []
    commit(record, alert())
    server.script(Answer(500), Answer(500), Answer(500))
    settings = DispatchSettings(max_attempts=3, base_delay_s=0.05, poll_s=0.05)
    asyncio.run(run_until(dispatcher(record, server, failures, settings), server, 3))
    (failure,) = failures
    assert failure["type"] == "delivery.failed" and failure["severity"] == "critical"
    assert failure["case"] == "C-0001" and failure["victim"] == "V-01"
    assert alert()["id"] in failure["detail"] and "3 attempt(s)" in failure["detail"]
    assert PHONES["V-01"] not in json.dumps(failure)
    assert record.outbox_depth() == 0 and len(server.seen) == 3


def test_a_400_fails_at_once_without_the_phone_in_the_error(server, record_url):
    record, failures = Record.open(record_url), []
    commit(record, alert())
    server.script(Answer(400, body={"code": 21211, "status": 400,
                                    "message": f"The 'To' number {PHONES['V-01']} is not "
                                               "a valid phone number."}))
    asyncio.run(run_until(dispatcher(record, server, failures), server, 1))
    (failure,) = failures
    assert "21211" in failure["detail"] and PHONES["V-01"] not in failure["detail"]


def test_a_restarted_dispatcher_does_not_resend_what_was_sent(server, record_url):
    record = Record.open(record_url)
    commit(record, alert(1))
    asyncio.run(run_until(dispatcher(record, server), server, 1))
    commit(record, alert(2))  # written, then the daemon dies before sending it
    record.close()
    reopened = Record.open(record_url)
    seen = asyncio.run(run_until(dispatcher(reopened, server), server, 2))
    assert [texts.reference(alert(n)["id"]) in s.form["Body"] for n, s in
            zip((1, 2), seen, strict=True)] == [True, True]
    assert len(server.seen) == 2 and reopened.outbox_depth() == 0


def test_escalated_record_places_a_call_that_says_the_reference(server, record_url):
    record = Record.open(record_url)
    commit(record, alert(state="escalated", escalation=2,
                          detail="escalation level 2: not acknowledged"))
    (call,) = asyncio.run(run_until(dispatcher(record, server), server, 1))
    assert call.path.endswith("/Calls.json") and call.form["To"] == PHONES["V-01"]
    assert "<Say" in call.form["Twiml"]
    assert " ".join(texts.reference(alert()["id"])) in call.form["Twiml"]
    assert call.form["StatusCallback"].startswith("https://tagwatch.example/twilio/status?")


def test_police_webhook_is_signed_with_the_shared_secret(server, record_url):
    record = Record.open(record_url)
    commit(record, alert(), police=True)
    police = webhook.PoliceWebhook(PoliceConfig(f"{server.url}/police", "s3cret"))
    d = dispatcher(record, server, police=police)
    asyncio.run(run_until(d, server, 2, path=""))
    (hook,) = [s for s in server.seen if s.path == "/police"]
    header = hook.headers["X-Tagwatch-Signature"]
    assert webhook.verify(hook.body, header, "s3cret")
    assert not webhook.verify(hook.body, header, "another secret")
    assert not webhook.verify(hook.body + b" ", header, "s3cret")
    assert json.loads(hook.body) == alert()  # police control gets the whole record
    assert hook.headers["X-Tagwatch-Escalation-Level"] == "0"


def test_the_wake_event_starts_new_rows_without_waiting_for_the_poll(server, record_url):
    record = Record.open(record_url)
    settings = DispatchSettings(poll_s=60)

    async def scenario() -> list:
        d = dispatcher(record, server, settings=settings)
        first_pass = asyncio.Event()
        read_outbox = d.start_due

        async def start_due() -> int:
            started = await read_outbox()
            first_pass.set()
            return started

        d.start_due = start_due
        task = asyncio.create_task(d.run())
        # The row is committed after the first read of the outbox: with a 60 s poll,
        # only the wake can start it within the 5 s below.
        await asyncio.wait_for(first_pass.wait(), 5.0)
        await asyncio.to_thread(commit, record, alert())
        d.wake.set()
        try:
            return await asyncio.to_thread(server.wait_for, 1, 5.0)
        finally:
            d.stop()
            await task

    assert len(asyncio.run(scenario())) == 1
