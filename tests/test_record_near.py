"""Crime-scene correlation (issue 22 item 2): `tagwatch record near`, Record.near and
GET /api/near, on SQLite and PostgreSQL.

The answer is every tag with a recorded fix within the radius in the window, with the
closest geodesic distance; the place index never misses what a scan of every fix finds;
the query itself is recorded (who, via, when, why, parameters) on the audit chain and on
each returned case's chain; bad input is exit 2 and never creates the record.
"""

from __future__ import annotations

import getpass
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pyproj import Geod

from tagwatch import cli
from tagwatch.record import Batch, Entry, Record, near, schema
from tagwatch.record.near import NearQuery, NearRefused
from tests.record_db import RecordDb, record_database

T0 = 1_764_324_930.0  # 2025-11-28T10:15:30Z
SCENE = (51.5074, -0.1278)  # lat, lon
GEOD = Geod(ellps="WGS84")


def at(bearing: float, metres: float, origin: tuple[float, float] = SCENE) -> tuple[float, float]:
    lon, lat, _ = GEOD.fwd(origin[1], origin[0], bearing, metres)
    return lat, lon


def fix(case: str, tag: str, ts: float, lat: float, lon: float, acc: float = 5.0) -> Entry:
    body = {"tag": tag, "ts": ts, "lat": lat, "lon": lon, "acc": acc, "late": False}
    return Entry(f"case:{case}", "fix", body, tag=tag, event_ts=ts)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordDb]:
    with record_database(request.param, tmp_path) as found:
        yield found


def scene_fixes() -> list[Entry]:
    """T-1 passes the scene (closest 40 m), T-2 stays 900 m away, T-3 is there but an
    hour too early, T-4 (in two cases) sits 150 m away, a heartbeat without position."""
    out = []
    for i, metres in enumerate((600, 300, 40, 260, 700)):
        out.append(fix("C-1", "T-1", T0 + 60 * i, *at(90, metres)))
    out += [fix("C-2", "T-2", T0 + 60 * i, *at(0, 900)) for i in range(5)]
    out += [fix("C-3", "T-3", T0 - 3600, *at(180, 10))]
    for case in ("C-4", "C-5"):
        out += [fix(case, "T-4", T0 + 120, *at(270, 150)),
                fix(case, "T-4", T0 + 130, *at(270, 149))]
    out.append(Entry("case:C-2", "fix", {"tag": "T-2", "ts": T0 + 1, "fix": "none",
                                          "lat": None, "lon": None}, tag="T-2", event_ts=T0 + 1))
    return out


def scene_query(**change) -> NearQuery:
    values = {"lat": SCENE[0], "lon": SCENE[1], "radius_m": 500.0, "since": T0 - 600,
              "until": T0 + 3600, "reason": "burglary at 10:20, ref CR-7"}
    values.update(change)
    return NearQuery(**values)


def test_near_finds_the_tags_there_then_and_records_the_query(db: RecordDb) -> None:
    record = Record.open(db.url)
    try:
        record.commit(Batch(scene_fixes()), T0 + 300)
        found = record.near(scene_query(), "det-smith", "cli", T0 + 7200)
        assert [(r["tag"], r["case"]) for r in found] == [
            ("T-1", "C-1"), ("T-4", "C-4"), ("T-4", "C-5")]
        t1 = found[0]
        assert t1["fixes"] == 3 and t1["first_ts"] == "2025-11-28T10:16:30Z"
        assert t1["last_ts"] == "2025-11-28T10:18:30Z"
        assert t1["min_distance_m"] == pytest.approx(40.0, abs=0.2)
        assert found[1]["min_distance_m"] == pytest.approx(149.0, abs=0.2)
        assert found[1]["fixes"] == 2

        audit = record.read(lambda d: d.query(
            "SELECT chain, kind, body FROM entries WHERE kind = 'near_query' ORDER BY chain"))
        assert [c for c, _, _ in audit] == ["audit", "case:C-1", "case:C-4", "case:C-5"]
        body = json.loads(audit[0][2])
        assert body["by"] == "det-smith" and body["via"] == "cli"
        assert body["reason"] == "burglary at 10:20, ref CR-7"
        assert body["params"]["radius_m"] == 500.0 and body["at"] == "2025-11-28T12:15:30Z"
        assert len(body["results"]) == 3
        assert json.loads(audit[1][2])["results"] == [{"tag": "T-1", "case": "C-1"}]

        nothing = record.near(scene_query(until=T0 - 700, since=T0 - 800), "x", "cli", T0)
        assert nothing == []  # a search finding nobody is recorded too
        assert record.read(lambda d: d.query(
            "SELECT count(*) FROM entries WHERE chain = 'audit'"))[0][0] == 2
        assert record.verify() == []
    finally:
        record.close()


def test_near_refuses_bad_parameters() -> None:
    for change, word in [({"radius_m": 0.0}, "radius"), ({"radius_m": -5.0}, "radius"),
                         ({"radius_m": 25_001.0}, "radius"), ({"lat": 91.0}, "lat"),
                         ({"lon": -180.5}, "lon"), ({"lat": float("nan")}, "lat"),
                         ({"since": T0 + 10, "until": T0}, "since"), ({"reason": "  "}, "reason")]:
        with pytest.raises(NearRefused, match=word):
            scene_query(**change).check()


@pytest.mark.parametrize("origin", [SCENE, (-33.87, 151.21), (64.1, -21.9), (0.01, 179.999),
                                    (-16.5, -179.995)])
def test_the_place_index_finds_what_a_scan_of_every_fix_finds(
        tmp_path: Path, origin: tuple[float, float]) -> None:
    """Random fixes around the point (inside, on and across cell edges, across the
    antimeridian): the indexed query equals a scan without the index, and equals the
    geodesic distance computed here fix by fix."""
    rng = random.Random(hash(origin) & 0xFFFF)
    entries = []
    for i in range(600):
        metres = rng.uniform(0, 6000)
        entries.append(fix(f"C-{i % 7}", f"T-{i % 40}", T0 + rng.uniform(0, 86400),
                           *at(rng.uniform(0, 360), metres, origin)))
    record = Record.open(f"sqlite://{tmp_path}/r.db")
    try:
        record.commit(Batch(entries), T0)
        for radius in (50.0, 800.0, 2500.0, 5000.0):
            query = NearQuery(origin[0], origin[1], radius, T0 + 3600, T0 + 80_000, "test")
            indexed = record.read(lambda d, q=query: near.find(d, q))
            scanned = record.read(lambda d, q=query: near.find(d, q, use_cells=False))
            assert indexed == scanned
            expect = {}
            for e in entries:
                _, _, d = GEOD.inv(origin[1], origin[0], e.body["lon"], e.body["lat"])
                if d <= radius and query.since <= e.event_ts <= query.until:
                    key = (e.tag, e.chain.removeprefix("case:"))
                    expect[key] = min(expect.get(key, np.inf), d)
            assert {(r["tag"], r["case"]): r["min_distance_m"] for r in indexed} == {
                k: round(v, 1) for k, v in expect.items()}
    finally:
        record.close()


def test_fixes_recorded_before_schema_3_are_indexed_by_the_migration(
        db: RecordDb, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
        m.setattr(near, "place_rows", lambda rows, entries: [])
        old = Record.open(db.url)
        old.commit(Batch(scene_fixes()), T0 + 300)
        old.close()
    assert db.raw("SELECT max(version) FROM schema_version")[0][0] == 2
    record = Record.open(db.url)
    try:
        assert record.migrations_applied == [3]
        found = record.near(scene_query(), "det", "cli", T0 + 7200)
        assert [(r["tag"], r["case"]) for r in found] == [
            ("T-1", "C-1"), ("T-4", "C-4"), ("T-4", "C-5")]
        # the same cells as written live: the migration's SQL equals near.cell_of
        for lat, lon, cell in db.raw("SELECT lat, lon, cell FROM fix_places"):
            assert cell == near.cell_of(lat, lon)
    finally:
        record.close()


def test_a_purged_fix_is_no_longer_found(db: RecordDb) -> None:
    record = Record.open(db.url)
    try:
        record.commit(Batch(scene_fixes()), T0 + 300)
        record.purge(older_than=T0 + 10_000, keep_window_s=0, now=T0 + 20_000)
        assert record.near(scene_query(), "det", "cli", T0 + 30_000) == []
        assert db.raw("SELECT count(*) FROM fix_places WHERE lat IS NOT NULL")[0][0] == 0
        assert record.verify() == []
    finally:
        record.close()


# --------------------------------------------------------------------------- command line


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("TAGWATCH_") and not name.startswith("TAGWATCH_TEST_"):
            monkeypatch.delenv(name)
    return monkeypatch


def near_args(**change: str) -> list[str]:
    values = {"--lat": str(SCENE[0]), "--lon": str(SCENE[1]), "--radius-m": "500",
              "--since": "2025-11-28T10:05:30Z", "--until": "2025-11-28T11:15:30Z",
              "--reason": "burglary at 10:20, ref CR-7"}
    values.update(change)
    return ["record", "near", *[x for kv in values.items() for x in kv]]


def test_cli_prints_one_json_object_per_tag_and_records_the_os_user(
        db: RecordDb, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    record = Record.open(db.url)
    record.commit(Batch(scene_fixes()), T0 + 300)
    record.close()
    env.setenv("TAGWATCH_RECORD_URL", db.url)
    assert cli.main(near_args()) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["tag"], r["case"]) for r in lines] == [("T-1", "C-1"), ("T-4", "C-4"),
                                                      ("T-4", "C-5")]
    assert set(lines[0]) == {"tag", "case", "first_ts", "last_ts", "min_distance_m", "fixes"}
    assert "recorded" in err
    (body,) = db.raw("SELECT body FROM entries WHERE chain = 'audit'")[0]
    assert json.loads(body)["by"] == getpass.getuser()


@pytest.mark.parametrize("change,word", [
    ({"--radius-m": "0"}, "radius"), ({"--radius-m": "100000"}, "radius"),
    ({"--lat": "95"}, "lat"), ({"--lon": "200"}, "lon"),
    ({"--since": "2025-11-29T00:00:00Z"}, "since"), ({"--until": "tomorrow"}, "--until"),
    ({"--reason": ""}, "reason")])
def test_cli_bad_input_is_exit_2_and_never_creates_the_record(
        tmp_path: Path, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        change: dict, word: str) -> None:
    path = tmp_path / "record.db"
    env.setenv("TAGWATCH_RECORD_URL", f"sqlite://{path}")
    assert cli.main(near_args(**change)) == 2
    _, err = capsys.readouterr()
    assert word in err
    assert not path.exists()
    assert cli.main(near_args()) == 2  # good input, no record: refused, nothing created
    assert "no case record" in capsys.readouterr()[1] and not path.exists()


def test_cli_without_a_reason_is_bad_usage(env: pytest.MonkeyPatch) -> None:
    args = near_args()
    cut = args.index("--reason")
    with pytest.raises(SystemExit) as stop:
        cli.main(args[:cut] + args[cut + 2:])
    assert stop.value.code == 2


# --------------------------------------------------------------------------- feed


def test_feed_near_is_for_investigators_and_recorded_with_their_name(tmp_path: Path) -> None:
    from tagwatch.config import FeedUser
    from tests import test_feed_api as api

    users = (*api.USERS, FeedUser("det-jones", "investigator", api._sha("inv-token")))
    record = Record.open(f"sqlite://{tmp_path}/record.db")
    record.commit(Batch(scene_fixes()), T0 + 300)
    hub = api.EventHub()
    on_ack, on_resolve = api.record_actions(record, hub)
    app = api.create_app(record=record, zones_provider=lambda: None, users=users, hub=hub,
                         on_ack=on_ack, on_resolve=on_resolve, health=lambda: {},
                         metrics=lambda: b"")
    params = {"lat": SCENE[0], "lon": SCENE[1], "radius_m": 500,
              "since": "2025-11-28T10:05:30Z", "until": "2025-11-28T11:15:30Z",
              "reason": "robbery, ref CR-9"}
    inv = {"Authorization": "Bearer inv-token"}
    try:
        with api.serve(app) as url, httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/api/near", params=params).status_code == 401
            for who in (api.OP, api.VIEW):
                denied = client.get("/api/near", params=params, headers=who)
                assert denied.status_code == 403 and "investigator" in denied.json()["error"]
            assert record.read(lambda d: d.query(
                "SELECT count(*) FROM entries WHERE chain = 'audit'"))[0][0] == 0
            ok = client.get("/api/near", params=params, headers=inv)
            assert ok.status_code == 200, ok.text
            assert [(r["tag"], r["case"]) for r in ok.json()] == [
                ("T-1", "C-1"), ("T-4", "C-4"), ("T-4", "C-5")]
            for change, word in [({"radius_m": "0"}, "radius"), ({"lat": "x"}, "lat"),
                                 ({"reason": ""}, "reason"), ({"since": "now"}, "since")]:
                bad = client.get("/api/near", params={**params, **change}, headers=inv)
                assert bad.status_code == 400 and word in bad.json()["error"], bad.text
            assert client.get("/api/alerts", headers=inv).status_code == 200  # reads as viewer
            assert client.post("/api/alerts/x/ack", json={}, headers=inv).status_code == 403
    finally:
        rows = record.read(lambda d: d.query("SELECT body FROM entries WHERE chain = 'audit'"))
        record.close()
    (body,) = [json.loads(b) for (b,) in rows]
    assert body["by"] == "det-jones" and body["via"] == "feed"
    assert body["reason"] == "robbery, ref CR-9"
