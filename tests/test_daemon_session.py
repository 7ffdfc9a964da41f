"""A lost broker session is loud (issue 16 item 3): another client connecting with the
daemon's client id takes its session over; the daemon logs it as critical, counts it in
tagwatch_broker_sessions_lost_total and says so in /readyz, and reconnects."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.daemon_harness import Daemon, make_daemon


def _events(d: Daemon, name: str) -> list[dict]:
    out = []
    for line in d.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == name:
            out.append(entry)
    return out


def _until(what: str, predicate, d: Daemon, timeout: float = 20.0) -> None:
    """Wait for a condition of the running daemon, with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert d.proc is not None and d.proc.poll() is None, d.logs()[-3000:]
        assert time.monotonic() < deadline, f"{what} within {timeout} s:\n{d.logs()[-3000:]}"
        time.sleep(0.05)


def test_a_takeover_of_the_daemons_session_is_critical_counted_and_not_ready(
        tmp_path: Path, mosquitto_factory) -> None:
    mosq = mosquitto_factory()
    d = make_daemon(tmp_path, mosq.url, f"sqlite://{tmp_path}/record.db")
    d.start()
    try:
        d.wait_ready()
        assert d.metric("tagwatch_broker_sessions_lost_total") == 0
        client_id = re.search(r'client_id = "([^"]+)"', d.config.read_text())[1]
        where = urlsplit(mosq.url)
        thief = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                            protocol=paho.MQTTv5)
        accepted = threading.Event()
        thief.on_connect = lambda *args: accepted.set()
        thief.connect(where.hostname, where.port)
        thief.loop_start()
        try:
            assert accepted.wait(10), "the thief's CONNACK"
        finally:
            thief.disconnect()
            thief.loop_stop()

        # It reconnects, without the session the thief's clean start wiped. Mosquitto may
        # say "session taken over" (MQTT 5 DISCONNECT 0x8E) or only close the connection:
        # then the reconnect's session_present false tells. One loss, either way.
        _until("the reconnect", lambda: any(e.get("connection") == 2
                                            for e in _events(d, "connected")), d)
        _until("the loss counted", lambda: d.metric(
            "tagwatch_broker_sessions_lost_total") >= 1, d)
        [lost] = _events(d, "session_taken_over") + _events(d, "session_lost")
        assert lost["level"] == "critical" and lost["client_id"] == client_id
        assert "may be lost" in lost["detail"]
        ready = d.get("/readyz")
        assert ready.status_code == 503 and "broker_session_lost" in ready.text
        assert d.metric("tagwatch_broker_sessions_lost_total") == 1
        assert d.stop() == 0
    finally:
        d.kill()
