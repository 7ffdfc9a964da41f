"""The police webhook's signature, idempotency keys and secrets in URLs; what the
feed's errors and health say; the public example token (issue 16, item 13)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tagwatch.config import Config, NotifyConfig, PoliceConfig, RecordConfig
from tagwatch.ingest.embedded_broker import free_port
from tagwatch.notify.outcome import SendFailed
from tagwatch.notify.webhook import PoliceWebhook, verify
from tests.daemon_harness import ROOT, write_config
from tests.test_feed_api import OP, VIEW, running_feed
from tests.test_notify_policy import alert
from tests.twilio_server import Answer, TwilioServer

SECRET = "police-shared-secret"
TOKEN_IN_URL = "s3cr3t-token-in-url"


def _post(url: str, record: dict, level: int = 0):
    async def go():
        hook = PoliceWebhook(PoliceConfig(webhook_url=url, secret=SECRET), timeout_s=5)
        try:
            return await hook.post(record, level)
        finally:
            await hook.aclose()
    return asyncio.run(go())


def _fields(header: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in header.split(","))


def test_the_signature_covers_time_level_and_body_and_goes_stale():
    with TwilioServer() as police:
        _post(f"{police.url}/dispatch", alert(), level=1)
        (post,) = police.wait_for(1, timeout=10, path="/dispatch")
    header = post.headers["X-Tagwatch-Signature"]
    fields = _fields(header)
    assert fields["level"] == "1" and abs(int(fields["t"]) - time.time()) < 60
    signed = f"{fields['t']}.1.".encode() + post.body
    assert fields["sha256"] == hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    now = int(fields["t"])
    assert verify(post.body, header, SECRET, now=now) is True
    assert verify(post.body, header, SECRET, now=now + 299) is True
    assert verify(post.body, header, SECRET, now=now + 301) is False  # stale: a replay
    assert verify(post.body, header.replace("level=1", "level=2"), SECRET, now=now) is False
    assert verify(post.body + b" ", header, SECRET, now=now) is False
    assert verify(post.body, header, "another secret", now=now) is False
    assert verify(post.body, None, SECRET) is False


def test_each_version_of_an_alert_record_has_its_own_idempotency_key():
    first = alert(state="updated")
    second = alert(state="updated", raised="2026-11-28T10:16:30.41Z",
                   detail="inside exclusion zone home by 30 m")
    with TwilioServer() as police:
        for record in (first, second, first):
            _post(f"{police.url}/dispatch", record)
        posts = police.wait_for(3, timeout=10, path="/dispatch")
    keys = [p.headers["Idempotency-Key"] for p in posts]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert all(k.startswith(f"{first['id']}:updated:0:") for k in keys)


def test_secrets_in_the_webhook_url_are_in_no_error_and_no_log(caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.DEBUG)  # even so: redacted
    with TwilioServer() as police:
        police.script(Answer(500))
        url = f"http://user:{TOKEN_IN_URL}@{police.url.removeprefix('http://')}/d?key={TOKEN_IN_URL}"
        with pytest.raises(SendFailed) as failed:
            _post(url, alert())
    closed = f"http://user:{TOKEN_IN_URL}@127.0.0.1:{free_port()}/d?key={TOKEN_IN_URL}"
    with pytest.raises(SendFailed) as refused:
        _post(closed, alert())
    texts = [str(failed.value), failed.value.detail, str(refused.value), refused.value.detail]
    texts += [r.getMessage() for r in caplog.records]
    assert "HTTP 500" in failed.value.detail and "/d?key=***" in failed.value.detail
    assert not [t for t in texts if TOKEN_IN_URL in t]
    config = Config(notify=NotifyConfig(police=PoliceConfig(webhook_url=url, secret=SECRET)),
                    record=RecordConfig(url=f"postgresql://tw@db/rec?password={TOKEN_IN_URL}",
                                        kind="postgresql", sqlite_path=None))
    assert TOKEN_IN_URL not in str(config.redacted())


def test_errors_do_not_name_the_record_and_api_answers_are_not_cached(tmp_path: Path):
    with running_feed(tmp_path) as feed, httpx.Client(base_url=feed.url, timeout=10) as c:
        where = str(tmp_path)
        for answer in (c.post("/api/alerts/ffffffffffffffffffffffff/ack", json={}, headers=OP),
                       c.get("/api/alerts/ffffffffffffffffffffffff/deliveries", headers=VIEW)):
            assert answer.status_code == 404 and where not in answer.text, answer.text
            assert answer.headers["cache-control"] == "no-store"
        breach = feed.breach(time.time() - 60)
        assert c.post(f"/api/alerts/{breach['id']}/resolve", json={}, headers=OP).is_success
        again = c.post(f"/api/alerts/{breach['id']}/ack", json={}, headers=OP)
        assert again.status_code == 409 and where not in again.text, again.text


def test_readyz_reasons_are_short_codes_without_error_text(tmp_path: Path):
    # A record that cannot be opened for writing is not needed: a broker that is not
    # there keeps the daemon "starting" and "broker_disconnected".
    port = free_port()
    config = write_config(tmp_path / "t.toml", f"mqtt://127.0.0.1:{free_port()}",
                          f"sqlite:///{tmp_path}/r.db", "x/v1", port=port)
    proc = subprocess.Popen([sys.executable, "-m", "tagwatch.cli", "run", "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert answer.status_code == 503
        assert set(answer.json()["reasons"]) <= {"starting", "broker_disconnected",
                                                 "record_unavailable", "stopping"}
        assert "broker_disconnected" in answer.json()["reasons"]
    finally:
        proc.kill()
        proc.wait(10)


def test_the_public_example_token_is_refused_at_start(tmp_path: Path):
    example_hash = hashlib.sha256(b"example-operator-token").hexdigest()
    users = ('[[feed.users]]\nname = "duty-operator"\nrole = "operator"\n'
             f'token_sha256 = "{example_hash}"\n')
    config = write_config(tmp_path / "t.toml", "mqtt://127.0.0.1:1", f"sqlite:///{tmp_path}/r.db",
                          "x/v1", extra=users)
    done = subprocess.run([sys.executable, "-m", "tagwatch.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "duty-operator" in done.stderr and "public" in done.stderr
