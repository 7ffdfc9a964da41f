"""`tagwatch zones`, `tagwatch cases check` and `tagwatch bench core`, run as a user runs them."""

import csv
import io
import json
import subprocess
import sys

import pytest

from tagwatch.cli import main

from .conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_cases_check_accepts_the_examples(example_cases):
    result = run("cases", "check", str(example_cases))
    assert result.returncode == 0, result.stderr
    assert "C-0001: tags T-1001" in result.stdout
    assert "2 case(s) loaded, 0 refused" in result.stdout


def test_cases_check_exits_2_and_names_the_bad_file(tmp_path, example_cases):
    (tmp_path / "good.geojson").write_text((example_cases / "C-0001.geojson").read_text())
    (tmp_path / "bad.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    result = run("cases", "check", str(tmp_path))
    assert result.returncode == 2
    assert "bad.geojson: case: missing" in result.stderr
    assert "1 case(s) loaded, 1 refused" in result.stdout


def test_zones_writes_one_row_per_fix_and_zone(tmp_path, example_cases):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(
        "tag,ts,lat,lon,acc\n"
        "T-1001,2026-11-30T10:00:00Z,51.5073,-0.1275,8\n"
        "T-2002,1795000000,51.5411,-0.0580,\n"
    )
    result = run("zones", str(example_cases), str(fixes))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["zone"] for r in rows] == ["home", "work", "school", "home", "curfew"]
    home = rows[0]
    assert home["case"] == "C-0001" and home["inside"] == "true"
    assert -40 < float(home["distance_m"]) < -30
    # The second fix is in the hole of C-0002's home: outside, near the hole's ring.
    assert rows[3]["inside"] == "false" and 0 < float(rows[3]["distance_m"]) < 40


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("tag,ts,lat\nT-1001,1795000000,51.5\n", "header lacks column(s) lon"),
        ("tag,ts,lat,lon\nT-1001,2026-11-30T10:00:00,51.5,-0.1\n", "line 2: ts:"),
        ("tag,ts,lat,lon\nT-1001,1795000000,151.5,-0.1\n", "line 2: lat:"),
        ("tag,ts,lat,lon\nT-1001,1795000000,51.5,abc\n", "line 2: lon: 'abc' is not a number"),
        ("tag,ts,lat,lon\nT-1001,,51.5,-0.1\n", "line 2: ts is empty"),
    ],
)
def test_zones_refuses_bad_rows_with_exit_2(tmp_path, example_cases, capsys, content, message):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(content)
    assert main(["zones", str(example_cases), str(fixes)]) == 2
    assert message in capsys.readouterr().err


def test_zones_missing_input_is_exit_2(tmp_path, example_cases, capsys):
    assert main(["zones", str(example_cases), str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: cannot read" in capsys.readouterr().err


def test_bench_core_small_prints_json_with_the_figures():
    result = run("bench", "core", "--small", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["core_fixes_per_s"] > 0 and figures["naive_fixes_per_s"] > 0
    assert figures["ratio"] == pytest.approx(
        figures["core_fixes_per_s"] / figures["naive_fixes_per_s"], rel=0.01
    )


def test_cases_check_refuses_an_id_that_cannot_be_a_topic_level(tmp_path, example_cases):
    # Issue 16.12: "C/1" passed `cases check` and killed the daemon at its first alert.
    doc = json.loads((example_cases / "C-0001.geojson").read_text())
    doc["case"]["id"] = "C/1"
    (tmp_path / "slash.geojson").write_text(json.dumps(doc))
    result = run("cases", "check", str(tmp_path))
    assert result.returncode == 2
    assert "slash.geojson: case.id: 'C/1' is not an id" in result.stderr
