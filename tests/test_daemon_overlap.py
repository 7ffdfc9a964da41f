"""An ingest batch's commit flushes while the next batch is evaluated (issue 21), in the
daemon's own units of work with a real SQLite record.

The order that counts stays the sequential one: acknowledgements strictly after their own
batch's commit, commits in batch order, and a commit that fails undoes its batch and the
evaluation made after it, both handled again in order: the same alerts and entries as
handling the batches one after the other. A commit is held in flight (or made to fail) by
a gate in front of `Record.commit`; the MQTT connection is a stand-in that only collects
acknowledgements.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import orjson

from tagwatch.config import load_config
from tagwatch.daemon.service import Daemon
from tagwatch.mqtt import Message
from tagwatch.record import Record
from tests.tracks import at_distance, case_doc, circle, fix
from zones import ZoneSet
from zones.casefile import parse_case

HOME, OTHER = (-0.1275, 51.5073), (-0.0300, 51.5300)


class Acks:
    """Acknowledgements, each with how many commits had returned when it was sent."""

    def __init__(self, commits: list[int]) -> None:
        self.mids: list[int] = []
        self.after: list[int] = []
        self.commits = commits

    async def ack_many(self, msgs: list[Message]) -> None:
        self.mids += [m.mid for m in msgs]
        self.after += [len(self.commits)] * len(msgs)


class Gate:
    """In front of Record.commit: the first commit waits for `release`, then fails when
    `fail` (a bug, not a RecordError: the daemon does not retry it)."""

    def __init__(self, record: Record, fail: bool = False) -> None:
        self.commit, self.fail = record.commit, fail
        self.release = threading.Event()
        self.done: list[int] = []
        self.calls = 0

    def __call__(self, batch, recorded_at: float) -> None:
        self.calls += 1
        if self.calls == 1:
            assert self.release.wait(30), "the test never released the first commit"
            if self.fail:
                raise RuntimeError("injected: the first commit fails")
        self.commit(batch, recorded_at)
        self.done.append(self.calls)


def _daemon(tmp_path: Path, name: str) -> tuple[Daemon, Record, Path]:
    one = parse_case(case_doc([circle("home")], case_id="C-1", tags=("T-1",)), "C-1.geojson")
    two = parse_case(
        case_doc([circle("home", centre=OTHER)], case_id="C-2", tags=("T-2",), device="VD-2"),
        "C-2.geojson",
    )
    db = tmp_path / f"{name}.db"
    (tmp_path / f"{name}.toml").write_text(
        f'[record]\nurl = "sqlite:///{db}"\n[cases]\npath = "{tmp_path}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGWATCH_")}
    config = load_config(tmp_path / f"{name}.toml", env)
    record = Record.open(config.record.url)
    return Daemon(config, record, ZoneSet([one, two]), {"C-1": one, "C-2": two}), record, db


def _batches(now: float) -> tuple[list[Message], list[Message]]:
    """Two batches, one per tag: each tag's two fixes 30 s apart inside its zone (a
    confirmed breach)."""

    def msg(mid: int, tag: str, centre: tuple[float, float], t: float) -> Message:
        payload = orjson.dumps(fix(now - 40 + t, at_distance(100, -30, centre=centre)))
        return Message(f"tagwatch/v1/tags/{tag}/fix", payload, 1, mid, now)

    first = [msg(1, "T-1", HOME, 0), msg(2, "T-1", HOME, 30)]
    second = [msg(3, "T-2", OTHER, 0), msg(4, "T-2", OTHER, 30)]
    return first, second


def _entries(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        sql = "SELECT chain, seq, kind, tag, event_ts FROM entries ORDER BY id"
        return con.execute(sql).fetchall()


def _alerts(record: Record) -> list[tuple]:
    alerts = record.latest_alerts()
    return sorted((a["type"], a["case"], a["tag"], a.get("confidence")) for a in alerts)


async def _evaluated(daemon: Daemon, tag: str) -> None:
    """Until the pipeline has seen `tag` (the second batch's evaluation ran)."""
    while tag not in daemon.pipeline.engine.tags:
        await asyncio.sleep(0)


def test_the_next_batch_is_evaluated_while_a_commit_flushes_and_acks_follow_their_commit(
    tmp_path: Path,
) -> None:
    daemon, record, db = _daemon(tmp_path, "overlap")
    gate = Gate(record)
    daemon.record.commit = gate  # type: ignore[method-assign]
    daemon.conn = acks = Acks(gate.done)  # type: ignore[assignment]
    first, second = _batches(time.time())

    async def scenario() -> None:
        try:
            await daemon._handle_overlapped(first)  # returns with its commit in flight
            assert acks.mids == []
            later = asyncio.create_task(daemon._handle_overlapped(second))
            await _evaluated(daemon, "T-2")  # while the first commit is held
            assert acks.mids == [] and gate.done == [] and _entries(db) == []
        finally:
            gate.release.set()
        await later
        async with daemon._unit():  # the second commit settled
            pass

    asyncio.run(scenario())
    assert acks.mids == [1, 2, 3, 4]
    assert acks.after == [1, 1, 2, 2]  # each batch acknowledged after its own commit
    chains = [chain for chain, _seq, kind, *_ in _entries(db) if kind == "fix"]
    assert chains == ["case:C-1", "case:C-1", "case:C-2", "case:C-2"]  # in batch order
    assert [a[:3] for a in _alerts(record) if a[0] == "zone.breach"] == [
        ("zone.breach", "C-1", "T-1"),
        ("zone.breach", "C-2", "T-2"),
    ]


def test_a_failed_commit_undoes_the_evaluation_after_it_and_both_are_handled_again(
    tmp_path: Path,
) -> None:
    now = time.time()
    baseline, base_record, base_db = _daemon(tmp_path, "sequential")
    baseline.conn = Acks([])  # type: ignore[assignment]
    for batch in _batches(now):
        asyncio.run(baseline._handle(batch))

    daemon, record, db = _daemon(tmp_path, "overlap")
    gate = Gate(record, fail=True)
    daemon.record.commit = gate  # type: ignore[method-assign]
    daemon.conn = acks = Acks(gate.done)  # type: ignore[assignment]
    first, second = _batches(now)

    async def scenario() -> None:
        try:
            await daemon._handle_overlapped(first)
            later = asyncio.create_task(daemon._handle_overlapped(second))
            await _evaluated(daemon, "T-2")  # on the first batch's state, not committed
        finally:
            gate.release.set()
        await later
        async with daemon._unit():
            pass

    asyncio.run(scenario())
    assert sorted(acks.mids) == [1, 2, 3, 4] and acks.mids[:2] == [1, 2]
    assert all(after >= 1 for after in acks.after)  # none before a commit returned
    assert _entries(db) == _entries(base_db)  # each fix once, in batch order
    assert _alerts(record) == _alerts(base_record)
    assert any(a[0] == "zone.breach" for a in _alerts(record))
    assert daemon.metrics.batch_failures._value.get() >= 1
