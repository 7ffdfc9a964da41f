"""A poison message costs only itself (issue 16.1), through the real daemon and Mosquitto.

A fix nested 1,000 arrays deep used to raise RecursionError in decoding (500 deep in the
signature's canonical form), the batch stayed unacknowledged, came back after every
restart, and a few thousand of them stopped ingest for good while /readyz said ready.
Now: the nested ones are rejected as too_deep before anything recursive reads them; a
message whose handling fails for any other reason (here the documented fault-injection
seam, TAGWATCH_TEST_FAULT: the batch fails after decoding, as a bug would) is found by
splitting its batch, rejected as internal_error with its SHA-256, and acknowledged; the
good fixes of the same burst still alert; repeated failures turn /readyz 503 and count
in tagwatch_batch_failures_total; after a restart nothing comes back.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import orjson

from tagwatch.pipeline import FAULT_ENV, TESTING_ENV
from tagwatch.signing import sign
from tests.daemon_harness import (
    Collector,
    Daemon,
    Publisher,
    RecordDb,
    make_daemon,
    record_db,  # noqa: F401  (fixture)
)
from tests.record_db import record_database

MARK = "FAULT-7f3a"  # a payload holding this fails its batch (the daemon's FAULT_ENV)
FAULT = {FAULT_ENV: MARK, TESTING_ENV: "1"}  # the seam is honoured only in a test run
KEY = bytes(range(32))
TAGS = {"T-1": (-0.1275, 51.5073), "T-3": (-0.0300, 51.5300), "T-4": (0.0500, 51.5600)}
FLOOD = 3000
# The flood must reach the depth check: without a rate limit here (test_daemon_flood.py
# has the limit's own test; with it, most of a one-tag flood would be rate_limited).
NO_LIMIT = {"TAGWATCH_INGEST_TAG_RATE_PER_S": "0"}


def _cases(folder: Path) -> Path:
    folder.mkdir()
    for n, (tag, centre) in enumerate(TAGS.items(), 1):
        doc = {
            "type": "FeatureCollection",
            "case": {"id": f"C-{n}", "tags": [tag], "timezone": "Europe/London",
                     "victims": [{"id": "V-1", "phone": f"+44770090010{n}"}]},
            "features": [{"type": "Feature",
                          "geometry": {"type": "Point", "coordinates": list(centre)},
                          "properties": {"zone": "home", "kind": "exclusion",
                                         "radius_m": 100}}],
        }
        (folder / f"C-{n}.geojson").write_bytes(orjson.dumps(doc))
    return folder


class Tags:
    """Fix payloads for the test tags, signed (with a running seq) when `signed`."""

    def __init__(self, signed: bool) -> None:
        self.signed = signed
        self.seq = 0

    def payload(self, obj: dict) -> bytes:
        if self.signed:
            self.seq += 1
            obj = sign({**obj, "seq": self.seq}, KEY)
        return orjson.dumps(obj)

    def breach(self, tag: str, t0: float) -> list[bytes]:
        lon, lat = TAGS[tag]
        return [self.payload({"ts": t0 + 30 * i, "lat": lat, "lon": lon, "acc": 5.0})
                for i in range(2)]  # 30 s apart: independent evidence, the second confirms

    def nested(self, tag: str, depth: int) -> bytes:
        """A fix far from home with a member nested `depth` arrays deep (about 2 KB)."""
        lon, lat = TAGS[tag]
        text = self.payload({"ts": time.time() - 60, "lat": lat + 0.05, "lon": lon})
        return text[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"

    def fault(self, tag: str) -> bytes:
        lon, lat = TAGS[tag]
        return self.payload({"ts": time.time() - 50, "lat": lat + 0.05, "lon": lon,
                             "note": MARK})


def _send_all(pub: Publisher, items: list[tuple[str, bytes]]) -> None:
    """Publish without waiting for each PUBACK (one burst), then wait for the last."""
    infos = [pub.client.publish(topic, payload, qos=1) for topic, payload in items]
    for info in infos:
        info.wait_for_publish(30)


def _confirmed(col: Collector, prefix: str, tag: str) -> bool:
    return any(a["type"] == "zone.breach" and a["confidence"] == "confirmed"
               for a in col.json_on(f"{prefix}/alerts/") if a["tag"] == tag)


def _reasons(col: Collector, prefix: str) -> list[str]:
    return [m["reason"] for m in col.json_on(f"{prefix}/rejected/")]


def _run_poison_scenario(d: Daemon, broker_url: str, db: RecordDb, tags: Tags) -> None:
    p = d.prefix
    topic = {tag: f"{p}/tags/{tag}/fix" for tag in TAGS}
    col = Collector(broker_url, f"{p}/alerts/#", f"{p}/rejected/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        # 1. One burst: a nested fix, a confirmed breach, a failing message amid it.
        first, second = tags.breach("T-1", time.time() - 40)
        fault = tags.fault("T-1")
        _send_all(pub, [(topic["T-1"], tags.nested("T-1", 1000)), (topic["T-1"], first),
                        (topic["T-1"], fault), (topic["T-1"], second)])
        col.wait_for(lambda _: _confirmed(col, p, "T-1"), 20, "T-1's confirmed breach")
        col.wait_for(lambda _: sorted(_reasons(col, p)) == ["internal_error", "too_deep"],
                     20, "the two rejections")

        # 2. A flood of nested fixes, two more failing messages (each its own batch), then
        #    another tag's breach: it still alerts, nothing is stuck behind the poison.
        _send_all(pub, [(topic["T-1"], tags.nested("T-1", 1000)) for _ in range(FLOOD)])
        for n in (2, 3):
            _send_all(pub, [(topic["T-3"], tags.fault("T-3"))])
            col.wait_for(lambda _, n=n: _reasons(col, p).count("internal_error") == n, 30,
                         f"internal_error {n}")
        _send_all(pub, [(topic["T-3"], x) for x in tags.breach("T-3", time.time() - 35)])
        col.wait_for(lambda _: _confirmed(col, p, "T-3"), 30, "T-3's confirmed breach")
        col.wait_for(lambda _: _reasons(col, p).count("too_deep") == FLOOD + 1, 60, "flood")

        ready = d.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert "ingest_batches_failing" in ready.json()["reasons"], ready.text
        assert d.metric("tagwatch_rejected_total", reason="too_deep") == FLOOD + 1
        assert d.metric("tagwatch_rejected_total", reason="internal_error") == 3
        assert d.metric("tagwatch_batch_failures_total") >= 3
        assert d.metric("tagwatch_alerts_total", type="zone.breach") == 4

        internal = [m for m in col.json_on(f"{p}/rejected/") if m["reason"] == "internal_error"]
        assert hashlib.sha256(fault).hexdigest() in internal[0]["detail"]
        bodies = [json.loads(b) for (b,) in db.raw(
            "SELECT body FROM entries WHERE chain = 'system' AND kind = 'rejected'")]
        assert sum(b["reason"] == "internal_error" for b in bodies) == 3
        assert any(hashlib.sha256(fault).hexdigest() in b["detail"] for b in bodies)

        # 3. A restart: every message was acknowledged, so nothing comes back; ready again.
        assert d.stop() == 0
        d.start()
        d.wait_ready()
        _send_all(pub, [(topic["T-4"], x) for x in tags.breach("T-4", time.time() - 35)])
        col.wait_for(lambda _: _confirmed(col, p, "T-4"), 30, "T-4's confirmed breach")
        assert d.metric("tagwatch_rejected_total") == 0
        assert d.metric("tagwatch_batch_failures_total") == 0
        assert d.get("/readyz").status_code == 200
        assert d.stop() == 0
    finally:
        d.kill()
        col.close()
        pub.close()


def test_poison_messages_cost_only_themselves(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    d = make_daemon(tmp_path, broker_url, record_db.url, cases=_cases(tmp_path / "cases"),
                    env={**FAULT, **NO_LIMIT})
    _run_poison_scenario(d, broker_url, record_db, Tags(signed=False))


def test_poison_messages_cost_only_themselves_with_signing(
        tmp_path: Path, broker_url: str) -> None:
    keys = tmp_path / "tag-keys"
    keys.write_text("".join(f"{tag} {KEY.hex()}\n" for tag in TAGS))
    with record_database("sqlite", tmp_path) as db:
        d = make_daemon(tmp_path, broker_url, db.url, cases=_cases(tmp_path / "cases"),
                        env={**FAULT, "TAGWATCH_TAG_KEYS": str(keys), **NO_LIMIT})
        _run_poison_scenario(d, broker_url, db, Tags(signed=True))


def test_the_fault_seam_is_refused_outside_a_test_run(tmp_path: Path, broker_url: str) -> None:
    """TAGWATCH_TEST_FAULT left set in production would fail every batch holding its
    bytes: without TAGWATCH_TESTING=1 the daemon refuses to start, naming the variable."""
    d = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db",
                    cases=_cases(tmp_path / "cases"), env={FAULT_ENV: MARK, TESTING_ENV: ""})
    d.start()
    try:
        assert d.proc is not None and d.proc.wait(30) == 2, d.logs()[-2000:]
        assert f"tagwatch: {FAULT_ENV} is set but {TESTING_ENV} is not 1" in d.logs()
    finally:
        d.kill()
