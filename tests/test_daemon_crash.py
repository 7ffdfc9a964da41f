"""kill -9 of the daemon at random points while a scripted stream is published, ten
times, restarted each time: no alert id missing, none opened twice, the chain verifies.

Needs Mosquitto: amqtt forgets a message that was sent but not acknowledged when the
client vanished, so nothing could be redelivered after a kill.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.daemon_harness import (
    HOME,
    ROOT,
    Collector,
    Publisher,
    make_daemon,
)

TRIALS = 10
M_LAT = 1 / 111_200
NO_ESCALATION = "[rules]\nack_timeout_s = 1000000\n"
# The rules of a daemon compared with `tagwatch replay` on `stream`: it is dated up to 36 min
# in the past, and the daemon's watchdogs run on the wall clock, so with the default
# no_comms_s (900 s) a tick between two chunks judged the tag silent (tag.no_comms, which
# replay, on event time, never raises). Silence counts only after a day here.
STREAM_RULES = NO_ESCALATION + "no_comms_s = 86400\n"


def stream(now: float, cycles: int = 12) -> list[dict]:
    """T-1001 walks in and out of home (2 m/s, a fix every 10 s): each cycle a breach
    (open, confirmed by the walk deep inside), an exit. It walks, not jumps: a fix
    hundreds of metres from the one seconds before is multipath, no evidence."""
    walk = (160, 140, 120, 100, 80, 60, 40, 20, 0, 0, 0, 20, 40, 60, 80, 100, 120, 140)
    fixes, ts = [], now - 10 * len(walk) * cycles - 30
    for _ in range(cycles):
        for north in walk:
            fixes.append({"ts": ts, "lat": HOME[1] + north * M_LAT, "lon": HOME[0],
                          "acc": 5.0, "seq": len(fixes)})
            ts += 10.0
    return fixes


def test_kill_9_loses_and_doubles_nothing(tmp_path: Path, mosquitto_factory) -> None:
    broker = mosquitto_factory()
    fixes = stream(time.time())
    cap = tmp_path / "capture.jsonl"
    cap.write_text("".join(json.dumps({"topic": "tagwatch/v1/tags/T-1001/fix", "payload": f})
                           + "\n" for f in fixes))
    (tmp_path / "rules.toml").write_text(STREAM_RULES)
    replayed = subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", "replay", str(ROOT / "config" / "cases"),
         str(cap), "--config", str(tmp_path / "rules.toml")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    want = {json.loads(line)["id"] for line in replayed.stdout.splitlines()}
    assert len(want) >= 2 * 12

    db = tmp_path / "record.db"
    d = make_daemon(tmp_path, broker.url, f"sqlite://{db}", extra=STREAM_RULES)
    col = Collector(broker.url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker.url)
    rng = random.Random(20261128)
    topic = f"{d.prefix}/tags/T-1001/fix"
    per = -(-len(fixes) // TRIALS)
    chunks = [fixes[i * per:(i + 1) * per] for i in range(TRIALS)]
    try:
        d.start()
        d.wait_ready()
        for chunk in chunks:
            cut = rng.randint(0, len(chunk))
            for fix in chunk[:cut]:
                pub.send(topic, fix)
            time.sleep(rng.uniform(0.0, 0.03))  # the random kill point, not a wait
            d.kill()
            for fix in chunk[cut:]:  # queued by the broker while the daemon is dead
                pub.send(topic, fix)
            d.start()
            d.wait_ready()

        def ids(ms: list) -> set[str]:
            return {json.loads(p)["id"] for _, p, _ in ms}

        col.wait_for(lambda ms: ids(ms) >= want, 30, "every expected alert id")
        assert ids(col.messages) == want
        assert d.stop() == 0

        opened = Counter()
        for (body,) in _rows(db, "SELECT body FROM entries WHERE kind = 'alert'"):
            record = json.loads(body)
            if record["state"] == "open":
                opened[record["id"]] += 1
        assert set(opened) == want
        assert [i for i, n in opened.items() if n > 1] == []
        published_open = Counter(json.loads(p)["id"] for _, p, _ in col.messages
                                 if json.loads(p)["state"] == "open")
        assert set(published_open) == want
        verify = d.cli("record", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert d.logs().count('"event": "running"') == TRIALS + 1
    finally:
        d.kill()
        col.close()
        pub.close()


def _rows(db: Path, sql: str) -> list[tuple]:
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
