"""Signed fixes through the real daemon: with TAGWATCH_TAG_KEYS set, an unsigned fix is
rejected with its reason and signed fixes alert as usual."""

from __future__ import annotations

import json
from pathlib import Path

from tagwatch.signing import sign
from tests.daemon_harness import (
    Collector,
    Publisher,
    RecordDb,
    breach_fixes,
    make_daemon,
    record_db,  # noqa: F401  (fixture)
)

KEY = bytes(range(32))


def test_unsigned_fix_is_refused_and_signed_fixes_alert(
    tmp_path: Path, broker_url: str, record_db: RecordDb  # noqa: F811
) -> None:
    keys = tmp_path / "tag-keys"
    keys.write_text(f"T-1001 {KEY.hex()}\n")
    d = make_daemon(tmp_path, broker_url, record_db.url, env={"TAGWATCH_TAG_KEYS": str(keys)})
    col = Collector(broker_url, f"{d.prefix}/alerts/#", f"{d.prefix}/rejected/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        first, second = breach_fixes()
        pub.send(f"{d.prefix}/tags/T-1001/fix", {**first, "seq": 1})  # no signature
        col.wait_for(lambda ms: any("/rejected/" in t for t, _, _ in ms), 10, "rejection")
        (rejected,) = [json.loads(p) for t, p, _ in col.messages if "/rejected/" in t]
        assert rejected["reason"] == "unsigned" and "T-1001" in rejected["detail"]
        for seq, fix in enumerate((first, second), start=2):
            pub.send(f"{d.prefix}/tags/T-1001/fix", sign({**fix, "seq": seq}, KEY))
        col.wait_for(lambda ms: any(b'"confirmed"' in p for _, p, _ in ms), 10, "breach")
        assert "signed_fixes" in d.logs()
    finally:
        col.close()
        pub.close()
        d.stop()
