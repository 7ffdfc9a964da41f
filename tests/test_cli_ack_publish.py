"""`tagwatch alerts ack ID` records the ack and publishes the acknowledged record on the
case's alerts topic, as the dashboard's ack does (issue 18 item 7); with the broker down
it says the ack is recorded but not published, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

from tagwatch.ingest.embedded_broker import free_port
from tests.daemon_harness import Collector, Publisher, alerts_of, breach_fixes, make_daemon


def test_cli_ack_is_recorded_and_published_on_the_alerts_topic(
        tmp_path: Path, broker_url: str) -> None:
    db = tmp_path / "record.db"
    d = make_daemon(tmp_path, broker_url, f"sqlite://{db}")
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        for fix in breach_fixes():
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        col.wait_for(lambda ms: len(ms) >= 1, 15, "the breach alert")
        alert_id = alerts_of(col, d.prefix)[0]["id"]

        done = d.cli("alerts", "ack", alert_id, "--by", "night-desk", "--note", "on it")
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout)
        col.wait_for(lambda ms: any(b'"acknowledged"' in p for _, p, _ in ms), 15, "ack on MQTT")
        (published,) = [a for a in alerts_of(col, d.prefix) if a["state"] == "acknowledged"]
        assert published == printed
        assert published["id"] == alert_id
        assert [t for t, p, _ in col.messages if b'"acknowledged"' in p] == [
            f"{d.prefix}/alerts/C-0001"]
        d.wait_ready(5)  # the CLI's own client id: the daemon was not disconnected
        assert d.stop() == 0

        down = d.config.read_text().replace(broker_url, f"mqtt://127.0.0.1:{free_port()}")
        d.config.write_text(down)
        again = d.cli("alerts", "ack", alert_id, "--note", "again")  # recorded again
        assert again.returncode == 1, again.stderr
        assert "acknowledged in the case record, not published" in again.stderr
        assert "MQTT broker mqtt://127.0.0.1:" in again.stderr
    finally:
        d.kill()
        col.close()
        pub.close()
