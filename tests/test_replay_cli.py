"""`tagwatch replay CASES INPUT` as a subprocess (DESIGN 3.5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.tracks import at_distance, home_case, times, track, utc

T0 = utc("2026-07-06T10:00:00Z")


def replay(cases: Path, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", "replay", str(cases), str(data)],
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    path = tmp_path / "C-1.geojson"
    path.write_bytes(orjson.dumps(home_case()))
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
