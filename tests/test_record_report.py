"""`tagwatch record report` (issue 22 item 3): a breach through the daemon into a real
record (SQLite and PostgreSQL), then its court report, read back as text.

The redacted report names the reference, the tag and the times (in the case's time
zone), and holds no coordinate of the zone or the fixes and no phone number; the
unredacted one has the coordinates. The first page and the map are rendered to PNG under
test-artifacts/ (pdftoppm when installed) to be looked at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pypdf import PdfReader

from tests.daemon_harness import (
    ROOT,
    Collector,
    Publisher,
    RecordDb,
    make_daemon,
    record_db,  # noqa: F401  (fixture)
)

ARTIFACTS = ROOT / "test-artifacts"
CASE_FILE = json.loads((ROOT / "config" / "cases" / "C-0001.geojson").read_text())
PHONE = CASE_FILE["case"]["victims"][0]["phone"]


def _coordinate_texts(values: list[float]) -> set[str]:
    """The digits a coordinate would show as in any rounding of 3+ decimals."""
    out = set()
    for v in values:
        for places in (3, 4, 5, 6):
            out.add(f"{abs(v):.{places}f}")
    return out


def _zone_coordinates() -> list[float]:
    found = []

    def walk(x):
        if isinstance(x, list):
            if len(x) == 2 and all(isinstance(v, int | float) for v in x):
                found.extend(x)
            else:
                for y in x:
                    walk(y)
    for feature in CASE_FILE["features"]:
        walk(feature["geometry"]["coordinates"])
    return found


def _text(pdf: Path) -> str:
    return "\n".join(page.extract_text() or "" for page in PdfReader(pdf).pages)


def _render(pdf: Path, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "80", pdf, str(ARTIFACTS / name)],
                       check=True, timeout=60)
    else:
        shutil.copy(pdf, ARTIFACTS / f"{name}.pdf")


def test_report_of_a_breach_through_the_daemon(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    d = make_daemon(tmp_path, broker_url, record_db.url)
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        t0 = time.time() - 400
        # a walk at 1.5 m/s from 300 m north into the middle of zone home, then a minute
        # standing there (the engine confirms a breach on evidence, not on one fix)
        walk = [{"ts": t0 + 5 * i, "lat": 51.5100 - 0.0027 * i / 40, "lon": -0.1275,
                 "acc": 6.0 + i % 4} for i in range(41)]
        stay = [{"ts": t0 + 205 + 5 * i, "lat": 51.5073 + 0.00002 * (i % 3),
                 "lon": -0.1275 - 0.00002 * (i % 2), "acc": 5.0} for i in range(12)]
        fixes = [*walk, *stay]
        for fix in fixes:
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        col.wait_for(lambda ms: any(b'"confirmed"' in p for _, p, _ in ms), 20, "breach")
        assert d.stop() == 0
    finally:
        d.kill()
        col.close()
        pub.close()
    (alert_id,) = {json.loads(p)["id"] for _, p, _ in col.messages
                   if json.loads(p)["type"] == "zone.breach"}

    out = tmp_path / "report.pdf"
    done = d.cli("record", "report", "--alert", alert_id, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "redacted" in done.stdout and (out.stat().st_mode & 0o077) == 0
    text = _text(out)
    assert alert_id in text and "T-1001" in text and "C-0001" in text
    london = ZoneInfo("Europe/London")
    breach = [json.loads(p) for _, p, _ in col.messages if json.loads(p)["id"] == alert_id]
    for record in breach:  # each record's fix time, in the case's time zone
        when = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).astimezone(london)
        assert when.strftime("%Y-%m-%d %H:%M:%S") in text, text
    assert "Europe/London" in text and "confirmed" in text
    assert "warning ring" in text and "metres east" in text
    assert "hash" in text and "Not anchored" in text and "record verify" in text
    digits = re.sub(r"\s+", "", text)
    secret = _coordinate_texts(_zone_coordinates() + [v for f in fixes
                                                      for v in (f["lat"], f["lon"])])
    leaked = sorted(s for s in secret if s in digits)
    assert leaked == [], leaked
    assert PHONE not in digits and PHONE.lstrip("+") not in digits
    assert "home" not in text  # the zone's name (it could be a street's) is withheld
    _render(out, "report-redacted")

    police = tmp_path / "police.pdf"
    done = d.cli("record", "report", "--alert", alert_id, "--out", str(police),
                 "--unredacted")
    assert done.returncode == 0, done.stdout + done.stderr
    text = _text(police)
    assert "POLICE USE ONLY" in text and "51.507300" in text and "home" in text
    assert PHONE not in re.sub(r"\s+", "", text)
    _render(police, "report-unredacted")

    missing = d.cli("record", "report", "--alert", "nope", "--out", str(tmp_path / "x.pdf"))
    assert missing.returncode == 2 and "no such alert" in missing.stderr
    assert not (tmp_path / "x.pdf").exists()


def test_report_says_what_the_anchor_proves(
        tmp_path: Path, broker_url: str, record_db: RecordDb) -> None:  # noqa: F811
    anchors = tmp_path / "anchors.jsonl"
    env = {"TAGWATCH_RECORD_ANCHOR_PATH": str(anchors), "TAGWATCH_ANCHOR_KEY": "k" * 64}
    d = make_daemon(tmp_path, broker_url, record_db.url, env=env)
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        t0 = time.time() - 400
        walk = [{"ts": t0 + 5 * i, "lat": 51.5100 - 0.0027 * i / 40, "lon": -0.1275,
                 "acc": 6.0} for i in range(41)]
        stay = [{"ts": t0 + 205 + 5 * i, "lat": 51.5073, "lon": -0.1275, "acc": 5.0}
                for i in range(12)]
        for fix in [*walk, *stay]:
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        col.wait_for(lambda ms: any(b'"confirmed"' in p for _, p, _ in ms), 20, "breach")
        assert d.stop() == 0  # a clean stop anchors the heads
    finally:
        d.kill()
        col.close()
        pub.close()
    alert_id = next(json.loads(p)["id"] for _, p, _ in col.messages
                    if json.loads(p)["type"] == "zone.breach")
    out = tmp_path / "r.pdf"
    done = d.cli("record", "report", "--alert", alert_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = re.sub(r"\s+", " ", _text(out))
    assert "it matches, so every entry up to it" in text, text
    head = record_db.raw("SELECT hash FROM chain_heads WHERE chain = 'case:C-0001'")[0][0]
    assert head[:40] in re.sub(r"\s+", "", _text(out))


@pytest.mark.parametrize("args,word", [(["--out", "r.txt"], ".pdf"),
                                       (["--out", "no/such/dir/r.pdf"], "no such folder")])
def test_report_bad_output_is_exit_2(tmp_path: Path, args: list[str], word: str) -> None:
    from tagwatch import cli

    args = [str(tmp_path / a) if "/" in a or a.endswith(".txt") else a for a in args]
    assert cli.main(["record", "report", "--alert", "a", *args]) == 2


def test_a_long_history_runs_over_pages_and_notes_stay_out_of_the_redacted_one(
        tmp_path: Path) -> None:
    """Every entry is in the report however many there are (no cut-off), and operators'
    free-text notes (they may name a street) only in the unredacted one."""
    from tagwatch.record import Batch, Entry, Record
    from tagwatch.record import report as reports
    from zones import load_cases

    t0 = 1_764_324_930.0
    case = load_cases(ROOT / "config" / "cases").cases[0]
    alert = {"id": "a-long", "type": "zone.breach", "severity": "critical", "state": "open",
             "case": "C-0001", "tag": "T-1001", "zone": "home", "victim": "V-01",
             "ts": "2025-11-28T10:15:30Z", "raised": "2025-11-28T10:15:31Z", "lat": 51.5073,
             "lon": -0.1275, "acc": 5.0, "distance_m": -12.0, "confidence": "confirmed",
             "escalation": 0, "detail": "inside exclusion zone home by 12 m"}
    chain = "case:C-0001"
    entries = [Entry(chain, "fix", {"tag": "T-1001", "ts": t0, "lat": 51.5073,
                                    "lon": -0.1275, "acc": 5.0}, tag="T-1001", event_ts=t0),
               Entry(chain, "alert", alert, tag="T-1001", event_ts=t0, alert_id="a-long")]
    for i in range(60):
        action = {"action": "ack", "alert": "a-long", "by": f"op-{i}",
                  "note": f"called 07700 900{i:03d} at 1 Baker Street", "at": "x"}
        entries.append(Entry(chain, "action", action, tag="T-1001", event_ts=t0 + 60 + i,
                             alert_id="a-long"))
    record = Record.open(f"sqlite://{tmp_path}/r.db")
    record.commit(Batch(entries), t0 + 200)
    data = record.read(lambda db: reports.gather(
        db, "a-long", {"C-0001": case}.get, reports.anchoring(None, None)))
    record.close()
    out = reports.write_pdf(data, tmp_path / "long.pdf")
    text = _text(out)
    assert len(PdfReader(out).pages) >= 4
    for i in range(60):
        assert f"op-{i} chose ack" in text
    assert "Baker" not in text and "07700" not in re.sub(r"\s+", "", text)
    assert "(continued)" in text
    data.unredacted = True
    text = _text(reports.write_pdf(data, tmp_path / "police.pdf"))
    assert "1 Baker Street" in text and "[number]" in text  # phone numbers never


def test_an_anchor_file_that_cannot_be_read_is_said_not_fatal(tmp_path: Path) -> None:
    from tagwatch.record import Batch, Entry, Record
    from tagwatch.record import report as reports

    record = Record.open(f"sqlite://{tmp_path}/r.db")
    body = {"id": "a1", "type": "tag.tamper", "state": "open", "case": "C-0001",
            "tag": "T-1001", "ts": "2025-11-28T10:15:30Z"}
    record.commit(Batch([Entry("case:C-0001", "alert", body, tag="T-1001",
                               event_ts=1_764_324_930.0, alert_id="a1")]), 1_764_324_931.0)
    check = reports.anchoring(tmp_path / "gone.jsonl", b"k" * 32)
    found = record.read(lambda db: check(db, "case:C-0001", [1]))
    record.close()
    assert found.configured and "gone.jsonl: no such file" in found.text[0]
    assert "Not proven against anchors" in found.text[0]
