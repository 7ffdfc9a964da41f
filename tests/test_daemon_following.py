"""pattern.following through the real daemon and Mosquitto: the victim's phone (VD-01
of the shipped case C-0001) reports on `{prefix}/victims/VD-01/fix`, tag T-1001 follows
it 900 m behind; the daemon raises one following alert, the one `tagwatch replay` gives
for the same capture (same id)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon_harness import HOME, ROOT, Collector, Publisher, make_daemon

M_LAT, M_LON = 1 / 111_200, 1 / 69_300  # degrees per metre at London's latitude
ROUTE = (HOME[0], HOME[1] + 6000 * M_LAT)  # 6 km north of home: no zone near
NO_ESCALATION = "[rules]\nack_timeout_s = 1000000\n"


def _east(metres: float) -> tuple[float, float]:
    return ROUTE[1], ROUTE[0] + metres * M_LON


def capture(now: float) -> list[tuple[str, dict]]:
    """(topic under tagwatch/v1, payload): 20 minutes of a walk east at 2 m/s, the phone
    every 30 s, the tag 10 s after it, 900 m behind; the last fix 100 s ago."""
    t0 = now - 1300.0
    msgs = []
    for i in range(40):
        t = 30.0 * i
        lat, lon = _east(2.0 * t)
        msgs.append(("tagwatch/v1/victims/VD-01/fix",
                     {"ts": t0 + t, "lat": lat, "lon": lon, "acc": 10.0}))
        lat, lon = _east(2.0 * (t + 10) - 900)
        msgs.append(("tagwatch/v1/tags/T-1001/fix",
                     {"ts": t0 + t + 10, "lat": lat, "lon": lon, "acc": 10.0, "seq": i}))
    return msgs


def test_a_phone_and_a_tag_following_it_over_mqtt(tmp_path: Path, broker_url: str) -> None:
    msgs = capture(time.time())
    path = tmp_path / "capture.jsonl"
    path.write_text("".join(json.dumps({"topic": t, "payload": p}) + "\n" for t, p in msgs))
    (tmp_path / "rules.toml").write_text(NO_ESCALATION)
    replayed = subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", "replay", str(ROOT / "config" / "cases"),
         str(path), "--config", str(tmp_path / "rules.toml")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    expected = [r for r in map(json.loads, replayed.stdout.splitlines())
                if r["type"] == "pattern.following"]
    assert [(r["state"], r["case"], r["tag"], r["victim"], r["zone"]) for r in expected] == [
        ("open", "C-0001", "T-1001", "V-01", None)]

    d = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db", extra=NO_ESCALATION)
    col = Collector(broker_url, f"{d.prefix}/alerts/#", f"{d.prefix}/rejected/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        for topic, payload in msgs:
            pub.send(topic.replace("tagwatch/v1", d.prefix, 1), payload)

        def following(ms: list) -> list[dict]:
            return [a for a in (json.loads(p) for t, p, _ in ms if "/alerts/" in t)
                    if a["type"] == "pattern.following"]

        col.wait_for(lambda ms: following(ms), 30, "a pattern.following alert")
        # one more tag fix after it (still following): no second alert for the episode
        lat, lon = _east(2.0 * 1200 - 900)
        pub.send(f"{d.prefix}/tags/T-1001/fix",
                 {"ts": time.time() - 60, "lat": lat, "lon": lon, "acc": 10.0, "seq": 99})
        pub.send(f"{d.prefix}/tags/T-1001/fix", b"end")  # a rejection, processed after it
        col.wait_for(lambda ms: any("/rejected/" in t for t, _, _ in ms), 30, "end marker")
        got = following(col.messages)
        assert [(a["id"], a["state"], a["severity"], a["victim"], a["zone"]) for a in got] == [
            (expected[0]["id"], "open", "warning", "V-01", None)]
        assert 850 <= got[0]["distance_m"] <= 900
        assert d.stop() == 0
    finally:
        d.kill()
        col.close()
        pub.close()
