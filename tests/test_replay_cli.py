"""`tagwatch replay CASES INPUT` as a subprocess (DESIGN 3.5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.tracks import VICTIM, at_distance, case_doc, circle, home_case, times, track, utc

T0 = utc("2026-07-06T10:00:00Z")


def replay(cases: Path, data: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", "replay", *flags, str(cases), str(data)],
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    path = tmp_path / "C-1.geojson"
    path.write_bytes(orjson.dumps(home_case()))
    return path


@pytest.fixture
def cases_no_phone(tmp_path: Path) -> Path:
    """The home case whose victim has no device of her own: a CSV of tag fixes gives
    only the tag's alerts (with a device that never reports, her protection is degraded)."""
    path = tmp_path / "C-1.geojson"
    path.write_bytes(orjson.dumps(case_doc([circle("home", warn_m=250, victim=VICTIM)],
                                           device=None)))
    return path


def capture_lines() -> list[bytes]:
    fixes = track(
        [at_distance(100, d) for d in (400, 200, -20, -20, -20, 40, 80, 120)], times(T0, 30, 8)
    )  # walks in, stays, walks out
    lines = [{"topic": "tagwatch/v1/tags/T-1/fix", "payload": f} for f in fixes]
    lines.append({"topic": "tagwatch/v1/tags/T-1/fix", "payload": fixes[:3]})  # a redelivery
    lines.append({"topic": "tagwatch/v1/tags/T-9/fix", "payload": fixes[0]})  # rejected
    return [orjson.dumps(x) for x in lines]


def test_capture_stdout_is_only_json_lines_and_byte_identical_twice(cases, tmp_path):
    data = tmp_path / "capture.jsonl"
    data.write_bytes(b"\n".join(capture_lines()) + b"\n")
    first, second = replay(cases, data), replay(cases, data)
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout == second.stdout
    records = [json.loads(line) for line in first.stdout.decode().splitlines()]
    assert [
        (r["type"], r["state"], r["confidence"]) for r in records if r["type"] == "zone.breach"
    ] == [
        ("zone.breach", "open", "probable"),
        ("zone.breach", "updated", "confirmed"),
        ("zone.breach", "resolved", "confirmed"),
    ]
    assert all(r["raised"] == r["ts"] for r in records)  # event time, never the wall clock


def test_csv_input(cases, tmp_path):
    data = tmp_path / "fixes.csv"
    rows = ["tag,ts,lat,lon,acc,seq"]
    for i, d in enumerate((-20, -20)):
        lon, lat = at_distance(100, d)
        rows.append(f"T-1,2026-07-06T10:0{i}:00Z,{lat},{lon},10,{i}")
    data.write_text("\n".join(rows) + "\n")
    done = replay(cases, data)
    assert done.returncode == 0, done.stderr.decode()
    out = [json.loads(x) for x in done.stdout.decode().splitlines()]
    # the victim's phone (VD-1) never reported: protection is degraded from the first fix
    assert [r["detail"] for r in out if r["type"] == "protection.degraded"] == [
        "protection degraded: device_stale (the victim's device has no recent position)"]
    assert [(r["type"], r["confidence"]) for r in out if r["type"] != "protection.degraded"] == [
        ("zone.breach", "probable"),
        ("zone.breach", "confirmed"),
    ]


@pytest.mark.parametrize(
    "name, content, line",
    [
        (
            "bad.jsonl",
            b'{"topic": "tagwatch/v1/tags/T-1/fix", "payload": {}}\n{not json\n',
            "line 2",
        ),
        ("notopic.jsonl", b'{"payload": {"ts": 1783332000}}\n', "line 1"),
        (  # RecursionError (exit 1, a traceback) before the depth check of issue 16.1
            "deep.jsonl",
            b'{"topic": "tagwatch/v1/tags/T-1/fix", "payload": {}}\n'
            b'{"topic": "tagwatch/v1/tags/T-1/fix", "payload": ' + b"[" * 100_000
            + b"]" * 100_000 + b"}\n",
            "line 2",
        ),
        ("notag.csv", b"ts,lat,lon\n2026-07-06T10:00:00Z,51.5,-0.12\n", "tag"),
    ],
)
def test_bad_input_exits_2_naming_file_and_line(cases, tmp_path, name, content, line):
    data = tmp_path / name
    data.write_bytes(content)
    done = replay(cases, data)
    assert done.returncode == 2
    assert done.stdout == b""
    message = done.stderr.decode()
    assert name in message and line in message, message


def breach_rows(bad: dict[int, str]) -> str:
    """A CSV of four fixes inside the zone (a confirmed breach), rows replaced by `bad`."""
    rows = ["tag,ts,lat,lon,acc"]
    for i in range(4):
        lon, lat = at_distance(100, -20)
        rows.append(bad.get(i, f"T-1,2026-07-06T10:0{i}:00Z,{lat},{lon},10"))
    return "\n".join(rows) + "\n"


BAD_ROWS = {  # row index -> (row, what stderr must say about its line)
    0: ("T-1,2026-07-06T10:00:00Z,51.5073,,10", "line 2: lon: missing_field"),
    1: ("T-1,2026-07-06T10:01:00,51.5073,-0.1275,10", "line 3: ts: naive_timestamp"),
    2: ("T-1,2026-07-06T10:02:00Z,51.5073,-0.1275,-5", "line 4: acc: out_of_range"),
    3: ("T-1,2026-07-06T10:03:00Z,51.5073x,-0.1275,10", "line 5: lat: wrong_type"),
}


@pytest.mark.parametrize("index", sorted(BAD_ROWS))
def test_a_bad_csv_row_is_reported_with_line_and_field_and_exits_2(cases_no_phone, tmp_path,
                                                                  index):
    row, said = BAD_ROWS[index]
    data = tmp_path / "fixes.csv"
    data.write_text(breach_rows({index: row}))
    done = replay(cases_no_phone, data)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert f"{data}: {said}" in err, err
    assert "1 bad row(s)" in err
    # stdout keeps only the alert records of the good rows
    out = [json.loads(x) for x in done.stdout.decode().splitlines()]
    assert out and {r["type"] for r in out} == {"zone.breach"}


def test_lenient_exits_0_with_the_same_alerts_and_the_same_report(cases_no_phone, tmp_path):
    data = tmp_path / "fixes.csv"
    data.write_text(breach_rows({i: row for i, (row, _) in BAD_ROWS.items() if i >= 2}))
    strict = replay(cases_no_phone, data)
    lenient = replay(cases_no_phone, data, "--lenient")
    assert (strict.returncode, lenient.returncode) == (2, 0)
    assert strict.stdout == lenient.stdout
    assert [json.loads(x)["confidence"] for x in lenient.stdout.decode().splitlines()] == [
        "probable", "confirmed"
    ]
    for _, said in list(BAD_ROWS.values())[2:]:
        assert said in lenient.stderr.decode()


def test_bad_capture_lines_are_reported_and_the_good_ones_still_replayed(cases, tmp_path):
    good = capture_lines()
    lines = [good[0], b"{not json", b'{"payload": {}}', *good[1:5],
             b'{"topic": "tagwatch/v1/tags/T-1/fix", "payload": {"ts": 1783332000, "lat": 51.5}}',
             b'{"topic": "tagwatch/v1/tags/T-1/fix", "payload": {}, "received": "noon"}']
    data = tmp_path / "capture.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    done = replay(cases, data)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "line 2: (line): not JSON" in err
    assert "line 3: (line): expected" in err
    assert "line 8: lon: missing_field" in err
    assert "line 9: received:" in err
    assert "4 bad row(s)" in err
    records = [json.loads(x) for x in done.stdout.decode().splitlines()]
    assert ("zone.breach", "confirmed") in {(r["type"], r["confidence"]) for r in records}


def test_a_tag_in_no_case_is_said_once_and_is_not_an_error(cases, tmp_path):
    data = tmp_path / "fixes.csv"
    data.write_text(breach_rows({}) + "T-9,2026-07-06T10:00:00Z,51.5,-0.12,10\n" * 3)
    done = replay(cases, data)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert err.count("T-9") == 1 and "belongs to no case" in err


def test_a_victim_devices_bad_values_are_not_repeated_on_stderr(cases, tmp_path):
    line = {"topic": "tagwatch/v1/victims/VD-1/fix",
            "payload": {"ts": "2026-07-06T10:00:00Z", "lat": 95.123456, "lon": -0.1275}}
    data = tmp_path / "capture.jsonl"
    data.write_bytes(orjson.dumps(line) + b"\n")
    done = replay(cases, data)
    err = done.stderr.decode()
    assert done.returncode == 2
    assert "line 1: lat: out_of_range" in err and "95.12" not in err, err


def test_a_line_that_is_not_utf8_is_reported_and_the_others_replayed(cases_no_phone, tmp_path):
    data = tmp_path / "fixes.csv"
    text = breach_rows({}).encode()
    lines = text.splitlines(keepends=True)
    lines.insert(2, b"T-1,2026-07-06T10:00:30Z,51.5\xff,-0.1275,10\n")
    data.write_bytes(b"\xef\xbb\xbf" + b"".join(lines))  # and a byte order mark, as Excel writes
    done = replay(cases_no_phone, data)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "line 3: (line): not UTF-8 (byte 0xff at column 30)" in err
    out = [json.loads(x) for x in done.stdout.decode().splitlines()]
    assert [(r["type"], r["confidence"]) for r in out][:2] == [
        ("zone.breach", "probable"), ("zone.breach", "confirmed")
    ]


def test_a_redelivered_upload_does_not_hide_a_later_bad_line(cases, tmp_path):
    good = track([at_distance(100, 400)] * 2, times(T0, 30, 2))
    upload = [*good, {"ts": "2026-07-06T10:05:00", "lat": 51.5, "lon": -0.12}]  # naive ts
    later = {"ts": "2026-07-06T10:09:00Z", "lat": 51.5, "lon": -0.12, "acc": -5}
    topic = "tagwatch/v1/tags/T-1/fix"
    lines = [{"topic": topic, "payload": upload}, {"topic": topic, "payload": upload},
             {"topic": topic, "payload": later}]
    data = tmp_path / "capture.jsonl"
    data.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    done = replay(cases, data)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "line 1: ts: naive_timestamp" in err
    assert "line 3: acc: out_of_range" in err
