"""No exception in building a batch's effects escapes it (issue 16.12), in the daemon's own
unit of work (`Daemon._handle`) with a real SQLite record.

The failure is a real one: a case whose id cannot be a topic level ("C/2", which the case
loader now refuses, but which an old loader let through) makes `Topics.alerts` raise
ValueError when its first alert is built. That case's messages are set aside as
internal_error and acknowledged; the other case's breach in the same batch is committed.
The MQTT connection is a stand-in that only collects acknowledgements.
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
from tagwatch.daemon.service import Daemon
from tagwatch.ingest.mqtt import Message
from tagwatch.record import Record
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
