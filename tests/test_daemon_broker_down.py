"""A broker that cannot be reached is said at once, at warning, with its URL and without
credentials, at every backoff step (issue 18 item 6); `tagwatch demo --broker` that
cannot connect names the broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tagwatch.ingest.embedded_broker import free_port
from tests.daemon_harness import ROOT, make_daemon


def _warnings(d, event: str) -> list[dict]:
    out = []
    for line in d.logs().splitlines():
        if f'"event": "{event}"' in line:
            out.append(json.loads(line))
    return out


def _wait_warnings(d, event: str, count: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(found := _warnings(d, event)) < count:
        assert d.proc.poll() is None, d.logs()[-2000:]
        assert time.monotonic() < deadline, f"{count} {event} not logged:\n{d.logs()[-2000:]}"
        time.sleep(0.05)  # polling the log file, with a deadline
    return found


def test_daemon_warns_naming_the_unreachable_broker_at_every_backoff_step(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    d = make_daemon(tmp_path, f"mqtt://127.0.0.1:{port}", f"sqlite://{tmp_path}/record.db",
                    extra="", env={"TAGWATCH_BROKER_PASSWORD": "s3cret-pw"})
    d.config.write_text(d.config.read_text().replace(
        "[broker]\n", '[broker]\nusername = "tagwatch"\n'))
    d.start()
    try:
        found = _wait_warnings(d, "broker_unreachable", 3)
        first = found[0]
        assert first["level"] == "warning"
        assert first["broker"] == f"mqtt://127.0.0.1:{port}"
        assert first["retry_in_s"] > 0 and first["error"]
        assert "s3cret-pw" not in d.logs()
        assert d.get("/readyz").status_code == 503
    finally:
        assert d.stop() == 0


def test_demo_with_an_unreachable_broker_names_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGWATCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", "demo", "--broker",
         f"mqtt://127.0.0.1:{port}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"MQTT broker mqtt://127.0.0.1:{port}: cannot connect" in done.stderr, done.stderr


def test_daemon_warns_at_every_failed_reconnect_after_the_broker_went_away(
        tmp_path: Path, mosquitto_factory) -> None:
    broker = mosquitto_factory()
    d = make_daemon(tmp_path, broker.url, f"sqlite://{tmp_path}/record.db")
    d.start()
    try:
        d.wait_ready()
        broker.stop()
        found = _wait_warnings(d, "broker_unreachable", 2)
        assert all(w["broker"] == broker.url and w["level"] == "warning" for w in found)
        broker.start()
        d.wait_ready()
    finally:
        assert d.stop() == 0
