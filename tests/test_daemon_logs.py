"""No victim phone number, zone coordinate or victim device position in any log line."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tagwatch.daemon.logs import redact_victim_data
from tests.daemon_harness import (
    EXAMPLE_CASES,
    HOME,
    Collector,
    Publisher,
    breach_fixes,
    make_daemon,
)

VICTIM = (HOME[0], HOME[1] + 0.0027)  # 300 m north of home: the tag is within 500 m


def _coordinates(node: object) -> list[float]:
    if isinstance(node, int | float):
        return [float(node)]
    if isinstance(node, list):
        return [c for item in node for c in _coordinates(item)]
    return []


def _spellings(value: float) -> set[str]:
    forms = {repr(value), f"{value:.6f}", f"{value:.5f}", f"{value:.4f}", f"{value:.3f}"}
    return {f for f in forms if len(f.split(".")[-1]) >= 3}


def forbidden() -> set[str]:
    words: set[str] = set()
    for path in EXAMPLE_CASES.glob("*.geojson"):
        doc = json.loads(path.read_text())
        words |= {v["phone"] for v in doc["case"]["victims"] if v.get("phone")}
        for feature in doc["features"]:
            for c in _coordinates(feature["geometry"]["coordinates"]):
                words |= _spellings(c)
    for c in VICTIM:
        words |= _spellings(c)
    return words


def test_processor_redacts_keys_numbers_and_phones() -> None:
    event = {"event": "x", "phone": "+447700900123", "victim": {"lat": 51.5, "lon": -0.1},
             "detail": "ring at [-0.1280, 51.5070] for +447700900456 at 10:15:30.405Z",
             "geometry": {"type": "Point"}, "count": 3}
    out = redact_victim_data(None, "info", event)
    text = json.dumps(out)
    for word in ("+447700900123", "+447700900456", "51.5070", "-0.1280", "51.5", "Point"):
        assert word not in text
    assert "10:15:30.405Z" in text and out["count"] == 3


def test_logs_hold_no_victim_data(tmp_path: Path, broker_url: str) -> None:
    d = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db")
    d.config.write_text(d.config.read_text().replace('level = "info"', 'level = "debug"'))
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        now = time.time()
        pub.send(f"{d.prefix}/victims/VD-01/fix",
                 {"ts": now - 10, "lat": VICTIM[1], "lon": VICTIM[0], "acc": 10.0})
        pub.send(f"{d.prefix}/victims/VD-01/fix",  # rejected, with the position in it
                 {"ts": now - 9, "lat": VICTIM[1], "lon": VICTIM[0], "acc": -1})
        for fix in breach_fixes(t0=now - 35):
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        col.wait_for(lambda ms: {json.loads(p)["type"] for _, p, _ in ms}
                     >= {"zone.breach", "proximity"}, 20, "breach and proximity")
        assert d.stop() == 0
    finally:
        d.kill()
        col.close()
        pub.close()
    lines = d.logs().splitlines()
    assert any('"event": "alert"' in line for line in lines)
    words = forbidden()
    for line in lines:
        try:
            event = json.loads(line)
            event.pop("timestamp", None)  # a clock reading can spell 51.507 by chance
            text = json.dumps(event)
        except json.JSONDecodeError:
            text = line
        leaked = sorted(w for w in words if w in text)
        assert not leaked, f"{leaked} in {line}"
