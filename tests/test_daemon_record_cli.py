"""`tagwatch record verify` names an edited, a deleted and a swapped row;
`tagwatch record export` writes a bundle whose manifest sums match."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tagwatch.record.canon import body_digest, entry_hash_v2
from tagwatch.wire import rfc3339
from tests.daemon_harness import (
    EXAMPLE_CASES,
    Collector,
    Publisher,
    RecordDb,
    breach_fixes,
    make_daemon,
    record_db,  # noqa: F401  (fixture)
)


def _fill(tmp_path: Path, broker_url: str, record_db: RecordDb,  # noqa: F811
          env: dict | None = None):
    d = make_daemon(tmp_path, broker_url, record_db.url, env=env, cases=_no_phone(tmp_path))
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        # far away 11 min before: so long ago that the breach is judged afresh, not as a
        # jump from there (engine/evidence.py STALE_S)
        t0 = time.time() - 700
        far = [{"ts": t0 + i, "lat": 51.52, "lon": -0.1275, "acc": 5.0} for i in range(6)]
        for fix in [*far, *breach_fixes(t0=t0 + 660)]:
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        pub.send(f"{d.prefix}/tags/T-1001/fix", b"garbage")
        col.wait_for(lambda ms: any(b'"confirmed"' in p for _, p, _ in ms), 20, "breach")
        assert d.stop() == 0
    finally:
        d.kill()
        col.close()
        pub.close()
    return d


def _no_phone(tmp_path: Path) -> Path:
    """The example cases with V-01 having no phone of its own: the chain of C-0001 holds
    the tag's fixes and the breach only (a phone that never reports would open a
    protection.degraded at the first fix, whose evidence window keeps the far fixes)."""
    folder = tmp_path / "cases"
    folder.mkdir()
    for src in EXAMPLE_CASES.glob("*.geojson"):
        text = src.read_text()
        if src.name == "C-0001.geojson":
            assert '"device": "VD-01", ' in text
            text = text.replace('"device": "VD-01", ', "")
        (folder / src.name).write_text(text)
    return folder


def test_verify_names_edited_deleted_and_swapped_rows(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    d = _fill(tmp_path, broker_url, record_db)
    ok = d.cli("record", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact" in ok.stdout

    record_db.drop_guards()
    chain = "case:C-0001"
    record_db.raw(f"UPDATE entries SET body = replace(body, '51.52', '51.53') "
                  f"WHERE chain = '{chain}' AND seq = 2")
    record_db.raw(f"DELETE FROM entries WHERE chain = '{chain}' AND seq = 4")
    a, b = record_db.raw(f"SELECT id, body FROM entries WHERE chain = '{chain}' "
                         "AND seq IN (6, 7) ORDER BY seq")
    for row_id, body in ((a[0], b[1]), (b[0], a[1])):
        quoted = body.replace("'", "''")
        record_db.raw(f"UPDATE entries SET body = '{quoted}' WHERE id = {row_id}")

    bad = d.cli("record", "verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    problems = [line.split("\t") for line in bad.stdout.splitlines()]
    found = {(c, s, what) for c, s, what, *_ in problems}
    assert (chain, "seq 2", "altered") in found, bad.stdout
    assert (chain, "seq 4", "removed") in found, bad.stdout
    assert any(c == chain and what == "reordered" and s in ("seq 6", "seq 7")
               for c, s, what in found), bad.stdout


def test_daemon_anchors_its_chain_heads_and_verify_finds_a_rehashed_rewrite(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    anchors = tmp_path / "anchors.jsonl"
    env = {"TAGWATCH_RECORD_ANCHOR_PATH": str(anchors), "TAGWATCH_ANCHOR_KEY": "a" * 64}
    d = _fill(tmp_path, broker_url, record_db, env)
    assert anchors.stat().st_mode & 0o077 == 0
    ok = d.cli("record", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "every anchored head matches" in ok.stdout and "note:" not in ok.stdout

    # The owner's rights: triggers dropped, an entry rewritten, the rest re-hashed.
    record_db.drop_guards()
    chain = "case:C-0001"
    rows = record_db.raw(f"SELECT seq, kind, tag, event_ts, alert_id, recorded_at, body "
                         f"FROM entries WHERE chain = '{chain}' ORDER BY seq")
    prev = record_db.raw(f"SELECT hash FROM entries WHERE chain = '{chain}' AND seq = 1")[0][0]
    for seq, kind, tag, event_ts, alert_id, recorded_at, body in rows[1:]:
        if seq == 2:
            body = body.replace("51.52", "51.53")
        body_hash = body_digest(body)
        digest = entry_hash_v2(prev, chain, seq, kind, tag, event_ts, alert_id, recorded_at,
                               body_hash)
        quoted = body.replace("'", "''")
        record_db.raw(f"UPDATE entries SET body = '{quoted}', body_hash = '{body_hash}', "
                      f"prev_hash = '{prev}', hash = '{digest}' "
                      f"WHERE chain = '{chain}' AND seq = {seq}")
        prev = digest
    record_db.raw(f"UPDATE chain_heads SET hash = '{prev}' WHERE chain = '{chain}'")

    key = d.env.pop("TAGWATCH_ANCHOR_KEY")
    del d.env["TAGWATCH_RECORD_ANCHOR_PATH"]
    fooled = d.cli("record", "verify")  # the chain alone cannot see it, and says so
    assert fooled.returncode == 0 and "not proven against anchors" in fooled.stdout
    d.env["TAGWATCH_ANCHOR_KEY"] = key
    bad = d.cli("record", "verify", "--anchors", str(anchors))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"{chain}\tseq 1\trewritten\tseq 1.." in bad.stdout or \
        f"{chain}\tseq 2\trewritten" in bad.stdout, bad.stdout


def test_export_writes_a_bundle_whose_sums_match(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    d = _fill(tmp_path, broker_url, record_db)
    out = tmp_path / "bundle"
    now = time.time()
    done = d.cli("record", "export", "--case", "C-0001", "--since", rfc3339(now - 3600),
                 "--until", rfc3339(now + 60), "--out", str(out))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sha256"]
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert any(a.get("type", a.get("body", {}).get("type")) == "zone.breach" for a in alerts)
    bad = d.cli("record", "export", "--case", "C-0001", "--since", "yesterday",
                "--until", rfc3339(now), "--out", str(out))
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_purge_keeps_evidence_records_itself_and_verify_stays_intact(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    d = _fill(tmp_path, broker_url, record_db)
    # A 3.6 s evidence window keeps only the breach's fix: the first fix after the
    # 11-minute gap is judged afresh and, deep inside, confirms by itself (issue 17:
    # engine/evidence.py, fresh after SLOW_S), so the open and confirmed records both
    # stand on it; the 6 far fixes and the second breach fix are purged.
    d.env["TAGWATCH_RECORD_EVIDENCE_WINDOW_H"] = "0.001"
    purged = d.cli("record", "purge", "--older-than-days", "0.000001")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert "purged 7 fix bodies" in purged.stdout and "kept 1" in purged.stdout
    ok = d.cli("record", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "7 fix bodies purged by recorded retention purges" in ok.stdout
    assert record_db.raw("SELECT count(*) FROM entries WHERE kind = 'purge'")[0][0] == 1
    refused = d.cli("record", "purge")  # no period given and none configured
    assert refused.returncode == 2 and "retention_days" in refused.stderr
