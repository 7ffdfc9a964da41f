"""Bad input never stops the daemon: each payload is rejected with its reason, published
on the rejected topic, counted and recorded; a valid breach right after still alerts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.daemon_harness import (
    Collector,
    Publisher,
    RecordDb,
    alerts_of,
    breach_fixes,
    make_daemon,
    record_db,  # noqa: F401  (fixture)
)


def _fix(now: float, **fields: object) -> dict:
    return {"ts": now - 30, "lat": 51.6, "lon": -0.3, **fields}


def bad_payloads(now: float) -> list[tuple[bytes, str]]:
    def js(value: object) -> bytes:
        return json.dumps(value).encode()

    return [
        (b"nope", "not_json"),
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"ts": 17', "not_json"),  # truncated
        (b'{"ts": %d, "lat": NaN, "lon": -0.3}' % now, "not_finite"),
        (b'{"ts": %d, "lat": 51.6, "lon": Infinity}' % now, "not_finite"),
        (js(_fix(now, lat=0, lon=0, fix="gnss")), "null_island"),
        (js(_fix(now, lat=423)), "out_of_range"),
        (js(_fix(now, lon=200)), "out_of_range"),
        (js(_fix(now, ts="1970-01-01T00:00:00Z")), "timestamp_too_old"),
        (js(_fix(now, ts=0)), "timestamp_too_old"),
        (js(_fix(now, ts=now + 400 * 86400)), "timestamp_in_future"),
        (js(_fix(now, ts="2026-11-28T10:00:00")), "naive_timestamp"),
        (js(_fix(now, ts="yesterday")), "bad_timestamp"),
        (js(_fix(now, tag="T-9999")), "tag_mismatch"),
        (b"{" + b" " * 70_000 + b"}", "payload_too_large"),  # 70 kB
        (js([{"ts": now, "lat": 51.6, "lon": -0.3}] * 5000), "payload_too_large"),  # 5,000 fixes
        (js([{}] * 1001), "batch_too_large"),
        (js(_fix(now, lat="51.5")), "wrong_type"),  # a string for a number
        (js(_fix(now, hdg="north")), "wrong_type"),
        (js(_fix(now, spd=True)), "wrong_type"),
        (b"[]", "empty_batch"),
        (b"42", "not_object"),
        (b'"hello"', "not_object"),
        (b"null", "not_object"),
        (js({"lat": 51.6, "lon": -0.3}), "missing_field"),
        (js({"ts": now - 30}), "missing_field"),
        (js(_fix(now, acc=-3)), "out_of_range"),
        (js(_fix(now, bat=150)), "out_of_range"),
        (js(_fix(now, strap="cut")), "out_of_range"),
        (js(_fix(now, fix="wifi")), "out_of_range"),
        (js(_fix(now, seq=-1)), "out_of_range"),
        (b"\x00nope\x00", "not_json"),  # NUL bytes: the record's text columns refuse raw NUL
        (js(_fix(now, lat=423, note="a\x00b")), "out_of_range"),
    ]


def test_bad_payloads_are_rejected_and_a_breach_still_alerts(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    d = make_daemon(tmp_path, broker_url, record_db.url)
    col = Collector(broker_url, f"{d.prefix}/rejected/#", f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        now = time.time()
        cases = bad_payloads(now)
        for payload, _reason in cases:
            pub.send(f"{d.prefix}/tags/T-1001/fix", payload)
        pub.send(f"{d.prefix}/tags/T-NOPE/fix", _fix(now))
        pub.send(f"{d.prefix}/victims/VD-NOPE/fix", _fix(now))
        # one bad fix in a batch rejects that fix only
        pub.send(f"{d.prefix}/tags/T-2002/fix", [_fix(now), _fix(now, lat=99), _fix(now + 1)])
        pub.send(f"{d.prefix}/tags/T-2002/fix", {**_fix(now - 60), "note": "a\x00b"})
        for fix in breach_fixes():
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)

        # C-0001's confirmed breach: from 19:00 to 07:00 London time T-2002's fixes (outside
        # C-0002's curfew zone) raise curfew alerts too, which may come first, and C-0001's
        # protection.degraded (V-01's phone never reported) may come before the confirmation.
        on_c1 = f"{d.prefix}/alerts/C-0001"
        col.wait_for(lambda ms: any(on_c1 in t and b'"confirmed"' in p for t, p, _ in ms), 20,
                     "C-0001's confirmed breach")
        expected = len(cases) + 3
        col.wait_for(lambda ms: sum("/rejected/" in t for t, _, _ in ms) >= expected, 20,
                     "rejections")
        assert d.proc.poll() is None

        on_tag = col.json_on(f"{d.prefix}/rejected/T-1001")
        assert [m["reason"] for m in on_tag] == [reason for _, reason in cases]
        assert all(set(m) == {"reason", "detail", "received", "payload"} for m in on_tag)
        assert all(len(m["payload"]) <= 1024 for m in on_tag)
        assert [m["reason"] for m in col.json_on("/rejected/T-NOPE")] == ["unknown_tag"]
        assert [m["reason"] for m in col.json_on("/rejected/VD-NOPE")] == ["unknown_device"]
        assert [m["reason"] for m in col.json_on("/rejected/T-2002")] == ["out_of_range"]

        alerts = [a for a in alerts_of(col, d.prefix) if a["type"] == "zone.breach"]
        assert [(a["type"], a["state"], a["confidence"]) for a in alerts] == [
            ("zone.breach", "open", "probable"), ("zone.breach", "updated", "confirmed")]

        rows = record_db.raw("SELECT count(*) FROM entries WHERE chain = 'system' "
                             "AND kind = 'rejected'")
        assert rows[0][0] == expected
        assert record_db.raw("SELECT count(*) FROM entries WHERE kind = 'fix' "
                             "AND tag = 'T-2002'")[0][0] == 3  # the NUL-note fix is recorded
        assert d.metric("tagwatch_rejected_total") == expected
        assert d.metric("tagwatch_rejected_total", reason="out_of_range") == 9
        assert d.metric("tagwatch_rejected_total", reason="payload_too_large") == 2
        assert d.metric("tagwatch_alerts_total", type="zone.breach") == 2
        assert d.stop() == 0
    finally:
        d.kill()
        col.close()
        pub.close()
