"""Live equals replay: a capture published through the broker gives the alert ids that
`tagwatch replay` gives for the same capture."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon_harness import (
    HOME,
    ROOT,
    Collector,
    Publisher,
    make_daemon,
)

M_LAT, M_LON = 1 / 111_200, 1 / 69_300  # degrees per metre at London's latitude
NO_ESCALATION = "[rules]\nack_timeout_s = 1000000\n"


def _at(north_m: float, east_m: float, origin: tuple[float, float] = HOME) -> tuple[float, float]:
    return origin[1] + north_m * M_LAT, origin[0] + east_m * M_LON


def capture(now: float, seed: int = 7) -> list[tuple[str, object]]:
    """(topic under tagwatch/v1, payload) in arrival order: T-1001 waits 2.5 km north,
    approaches home at 10 m/s past its victim's device, breaches, leaves; T-2002 waits
    near its home zone (warning); then a late batch of T-1001 fixes inside home."""
    rng = random.Random(seed)
    t0 = now - 500.0
    msgs: list[tuple[float, str, object]] = []
    track = [2500.0] * 60 + [2500.0 - 10 * 2 * i for i in range(1, 126)] + [0.0] * 5
    track += [40.0 * i for i in range(1, 11)]
    for i, north in enumerate(track):
        lat, lon = _at(north + rng.uniform(-3, 3), rng.uniform(-3, 3))
        fix = {"ts": round(t0 + 2 * i, 3), "lat": lat, "lon": lon, "acc": 6.0, "seq": i}
        msgs.append((fix["ts"], "tagwatch/v1/tags/T-1001/fix", fix))
    vlat, vlon = _at(1500, 0)  # the victim, on the tag's way
    msgs.append((t0 + 150, "tagwatch/v1/victims/VD-01/fix",
                 {"ts": t0 + 150, "lat": vlat, "lon": vlon, "acc": 10.0}))
    for i in range(180):
        lat, lon = _at(-350 + rng.uniform(-5, 5), rng.uniform(-5, 5), (-0.058, 51.5400))
        fix = {"ts": round(t0 + 1 + 2.2 * i, 3), "lat": lat, "lon": lon, "acc": 8.0}
        msgs.append((fix["ts"], "tagwatch/v1/tags/T-2002/fix", fix))
    msgs.sort(key=lambda m: m[0])
    late = [{"ts": t0 + 10 + i, "lat": HOME[1], "lon": HOME[0], "acc": 5.0} for i in range(3)]
    return [(topic, payload) for _, topic, payload in msgs] + [
        ("tagwatch/v1/tags/T-1001/fix", late)]


def test_live_alert_ids_equal_replay(tmp_path: Path, broker_url: str) -> None:
    msgs = capture(time.time())
    path = tmp_path / "capture.jsonl"
    path.write_text("".join(json.dumps({"topic": t, "payload": p}) + "\n" for t, p in msgs))
    (tmp_path / "rules.toml").write_text(NO_ESCALATION)
    replayed = subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", "replay", str(ROOT / "config" / "cases"),
         str(path), "--config", str(tmp_path / "rules.toml")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    expected = [json.loads(line) for line in replayed.stdout.splitlines()]
    types = {r["type"] for r in expected}
    assert {"zone.breach", "approach", "zone.warning", "proximity", "zone.late_breach",
            "zone.exit"} <= types, types
    want = {r["id"] for r in expected}

    d = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db",
                    extra=NO_ESCALATION)
    col = Collector(broker_url, f"{d.prefix}/alerts/#", f"{d.prefix}/rejected/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        for topic, payload in msgs:
            pub.send(topic.replace("tagwatch/v1", d.prefix, 1), payload)
        pub.send(f"{d.prefix}/tags/T-2002/fix", b"end of capture")  # processed last
        col.wait_for(lambda ms: any("/rejected/" in t for t, _, _ in ms), 30, "end marker")

        def live_ids(ms: list) -> set[str]:
            return {json.loads(p)["id"] for t, p, _ in ms if "/alerts/" in t}

        col.wait_for(lambda ms: live_ids(ms) >= want, 30, "every replayed alert id")
        assert live_ids(col.messages) == want
        live_states = sorted((json.loads(p)["id"], json.loads(p)["state"])
                             for t, p, _ in col.messages if "/alerts/" in t)
        assert live_states == sorted((r["id"], r["state"]) for r in expected)
        assert d.stop() == 0
    finally:
        d.kill()
        col.close()
        pub.close()
