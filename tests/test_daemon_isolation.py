"""No exception in building a batch's effects escapes it (issue 16.12), in the daemon's own
unit of work (`Daemon._handle`) with a real SQLite record.

The failure is a real one: a case whose id cannot be a topic level ("C/2", which the case
loader now refuses, but which an old loader let through) makes `Topics.alerts` raise
ValueError when its first alert is built. That case's messages are set aside as
internal_error and acknowledged; the other case's breach in the same batch is committed.
The MQTT connection is a stand-in that only collects acknowledgements.

A commit that fails on its data (issue: retried for ever, holding ingest) is injected
in a real SQLite record (DataFaultRecord: a batch holding one particular fix is
refused with RecordError); an outage (RecordUnavailable) is injected the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import time
from pathlib import Path

import orjson

from tagwatch.config import load_config
from tagwatch.daemon.service import DATA_ATTEMPTS, Daemon
from tagwatch.ingest.mqtt import Message
from tagwatch.record import Record, RecordError, RecordUnavailable
from tests.record_db import record_database, shipped_role
from tests.tracks import at_distance, case_doc, circle, fix
from zones import ZoneSet
from zones.casefile import parse_case

OTHER = (-0.0300, 51.5300)


class Acks:
    def __init__(self) -> None:
        self.mids: list[int] = []

    async def ack_many(self, msgs: list[Message]) -> None:
        self.mids += [m.mid for m in msgs]


def test_an_effect_that_raises_is_set_aside_and_the_rest_of_the_batch_commits(
        tmp_path: Path) -> None:
    good = parse_case(case_doc([circle("home")], case_id="C-1", tags=("T-1",)), "C-1.geojson")
    other = parse_case(case_doc([circle("home", centre=OTHER)], case_id="C-2", tags=("T-2",),
                                device="VD-2"), "C-2.geojson")
    bad = dataclasses.replace(other, id="C/2", zones=tuple(
        dataclasses.replace(z, case_id="C/2") for z in other.zones))
    cases = {"C-1": good, "C/2": bad}
    db = tmp_path / "record.db"
    (tmp_path / "t.toml").write_text(f'[record]\nurl = "sqlite:///{db}"\n'
                                     f'[cases]\npath = "{tmp_path}"\n')
    config = load_config(tmp_path / "t.toml", {k: v for k, v in os.environ.items()
                                               if not k.startswith("TAGWATCH_")})
    record = Record.open(config.record.url)
    daemon = Daemon(config, record, ZoneSet([good, bad]), cases)
    daemon.conn = acks = Acks()  # type: ignore[assignment]
    now = time.time()

    def msg(mid: int, tag: str, centre: tuple[float, float], t: float) -> Message:
        payload = orjson.dumps(fix(now - 40 + t, at_distance(100, -30, centre=centre)))
        return Message(f"tagwatch/v1/tags/{tag}/fix", payload, 1, mid, now)

    # each tag's two fixes 30 s apart: independent evidence, the second confirms
    batch = [msg(1, "T-2", OTHER, 0), msg(2, "T-1", (-0.1275, 51.5073), 0),
             msg(3, "T-2", OTHER, 30), msg(4, "T-1", (-0.1275, 51.5073), 30)]
    asyncio.run(daemon._handle(batch))

    assert sorted(acks.mids) == [1, 2, 3, 4]
    alerts = [a for a in record.latest_alerts() if a["type"] == "zone.breach"]
    assert [(a["case"], a["confidence"]) for a in alerts] == [("C-1", "confirmed")]
    with sqlite3.connect(db) as con:
        bodies = [json.loads(b) for (b,) in con.execute(
            "SELECT body FROM entries WHERE kind = 'rejected'")]
    assert [(b["source"], b["reason"]) for b in bodies] == [("T-2", "internal_error")] * 2
    assert all("ValueError" in b["detail"] and "SHA-256" in b["detail"] for b in bodies)
    assert daemon.metrics.batch_failures._value.get() > 0



MARK_ACC = 77.7  # the accuracy of the fix whose entry the record refuses


class DataFaultRecord(Record):
    """A real SQLite record, but a commit holding the fix entry of accuracy MARK_ACC
    fails as a commit fails on its data (RecordError, not the outage class); the first
    `outages` commits fail as an outage does (RecordUnavailable), whatever they hold."""

    outages = 0
    refusals = 0  # commits refused as a record refusing every write (not an outage)

    def commit(self, batch, recorded_at):  # type: ignore[no-untyped-def]
        if self.outages > 0:
            self.outages -= 1
            raise RecordUnavailable("record: database is locked (injected outage)")
        if self.refusals > 0:
            self.refusals -= 1
            raise RecordError("record: permission denied for table entries (injected)")
        if any(e.kind == "fix" and e.body.get("acc") == MARK_ACC for e in batch.entries):
            raise RecordError("record: the entry's data is refused (injected)")
        return super().commit(batch, recorded_at)


def _one_case_daemon(tmp_path: Path, url: str = "") -> tuple[Daemon, Acks, Path]:
    """A daemon of one case on a record at url (default: SQLite at the returned path)."""
    case = parse_case(case_doc([circle("home")], case_id="C-1", tags=("T-1",)), "C-1.geojson")
    db = tmp_path / "record.db"
    (tmp_path / "t.toml").write_text(f'[record]\nurl = "{url or f"sqlite:///{db}"}"\n'
                                     f'[cases]\npath = "{tmp_path}"\n')
    config = load_config(tmp_path / "t.toml", {k: v for k, v in os.environ.items()
                                               if not k.startswith("TAGWATCH_")})
    record = DataFaultRecord.open(config.record.url)
    daemon = Daemon(config, record, ZoneSet([case]), {"C-1": case})
    daemon.conn = acks = Acks()  # type: ignore[assignment]
    return daemon, acks, db


def _breach_with_a_marked_fix(now: float) -> list[Message]:
    """A confirmed breach of home (fixes 1 and 3, 30 s apart) and, between them, a fix
    far outside of accuracy MARK_ACC, whose fix entry the record refuses."""
    inside = fix(now - 40, at_distance(100, -30, centre=(-0.1275, 51.5073)))
    marked = fix(now - 35, at_distance(100, 2000, centre=(-0.1275, 51.5073)), MARK_ACC)
    topic = "tagwatch/v1/tags/T-1/fix"
    return [Message(topic, orjson.dumps(inside), 1, 1, now),
            Message(topic, orjson.dumps(marked), 1, 2, now),
            Message(topic, orjson.dumps({**inside, "ts": now - 10}), 1, 3, now)]


def _rejected(db: Path) -> list[dict]:
    with sqlite3.connect(db) as con:
        return [json.loads(b) for (b,) in con.execute(
            "SELECT body FROM entries WHERE kind = 'rejected'")]


def test_a_commit_that_fails_on_its_data_sets_its_message_aside(tmp_path: Path) -> None:
    """A commit that fails on its data (an error other than RecordUnavailable) used to be
    retried for ever, holding ingest; after DATA_ATTEMPTS failures it is raised, so the
    batch is split and the failing message set aside as internal_error, and the breach
    of the same batch is committed."""
    daemon, acks, db = _one_case_daemon(tmp_path)
    batch = _breach_with_a_marked_fix(time.time())
    asyncio.run(asyncio.wait_for(daemon._handle(batch), 60))

    assert sorted(acks.mids) == [1, 2, 3]
    breaches = [a for a in daemon.record.latest_alerts() if a["type"] == "zone.breach"]
    assert [a["confidence"] for a in breaches] == ["confirmed"]
    bodies = _rejected(db)
    assert [(b["source"], b["reason"]) for b in bodies] == [("T-1", "internal_error")]
    assert "RecordError" in bodies[0]["detail"]
    assert daemon.record_down is None  # the set-aside commit went through: ready again
    assert DATA_ATTEMPTS == 3


def test_a_record_refusing_every_write_loses_no_message(tmp_path: Path) -> None:
    """A record that refuses every write for a while, not as an outage (permission
    denied, a full disk): the batch is split, and its first message's rejection is
    refused too. That message used to be acknowledged unrecorded (lost, and the breach
    never confirmed); now it is held and handled again once the record takes writes."""
    daemon, acks, db = _one_case_daemon(tmp_path)
    # the batch, its first half and that message's rejection: DATA_ATTEMPTS refusals each
    daemon.record.refusals = 3 * DATA_ATTEMPTS  # type: ignore[attr-defined]
    asyncio.run(asyncio.wait_for(daemon._handle(_breach(time.time())), 60))

    assert daemon.record.refusals == 0  # type: ignore[attr-defined]
    assert sorted(acks.mids) == [1, 2]
    assert _rejected(db) == []
    breaches = [a for a in daemon.record.latest_alerts() if a["type"] == "zone.breach"]
    assert [a["confidence"] for a in breaches] == ["confirmed"]


def _breach(now: float) -> list[Message]:
    """Two fixes inside home, 30 s apart: a confirmed breach."""
    inside = fix(now - 40, at_distance(100, -30, centre=(-0.1275, 51.5073)))
    return [Message("tagwatch/v1/tags/T-1/fix", orjson.dumps(inside), 1, 1, now),
            Message("tagwatch/v1/tags/T-1/fix",
                    orjson.dumps({**inside, "ts": now - 10}), 1, 2, now)]


def test_an_outage_is_still_waited_out_however_long(tmp_path: Path) -> None:
    """RecordUnavailable (the outage class) is retried until the record is back, more
    often than DATA_ATTEMPTS: no message of the batch is set aside."""
    daemon, acks, db = _one_case_daemon(tmp_path)
    daemon.record.outages = DATA_ATTEMPTS + 2  # type: ignore[attr-defined]
    asyncio.run(asyncio.wait_for(daemon._handle(_breach(time.time())), 60))

    assert sorted(acks.mids) == [1, 2]
    assert daemon.record.outages == 0  # type: ignore[attr-defined]
    assert _rejected(db) == []
    breaches = [a for a in daemon.record.latest_alerts() if a["type"] == "zone.breach"]
    assert [a["confidence"] for a in breaches] == ["confirmed"]
    assert daemon.record_down is None


def test_writes_refused_to_the_daemons_role_hold_the_batch_whole(tmp_path: Path) -> None:
    """The daemon's role loses INSERT on fix_places (real PostgreSQL, the shipped role):
    every commit is refused, permission denied, whatever it holds. That is an outage: the
    batch is held whole, unacknowledged, and retried after a backoff until INSERT is
    granted back. It used to count as the batch's data failing: after DATA_ATTEMPTS
    refusals the batch was split and its pieces refused and retried one by one."""
    with record_database("postgresql", tmp_path) as db, shipped_role(db) as (role, url):
        db.raw(f"REVOKE INSERT ON fix_places FROM {role}")
        daemon, acks, _ = _one_case_daemon(tmp_path, url)
        errors = daemon.metrics.write_errors._value

        async def refused_then_granted() -> None:
            handled = asyncio.create_task(daemon._handle(_breach(time.time())))
            while errors.get() <= DATA_ATTEMPTS:  # refused more often than a data error is
                await asyncio.sleep(0.05)
            assert acks.mids == []
            assert "permission denied" in (daemon.record_down or "")
            db.raw(f"GRANT INSERT ON fix_places TO {role}")
            await handled

        try:
            asyncio.run(asyncio.wait_for(refused_then_granted(), 60))
            assert sorted(acks.mids) == [1, 2]
            assert daemon.metrics.batch_failures._value.get() == 0  # never split
            assert db.raw("SELECT count(*) FROM entries WHERE kind = 'rejected'") == [(0,)]
            breaches = [a for a in daemon.record.latest_alerts() if a["type"] == "zone.breach"]
            assert [a["confidence"] for a in breaches] == ["confirmed"]
            assert daemon.record_down is None
        finally:
            daemon.record.close()
