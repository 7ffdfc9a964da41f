"""Viewers cannot slow alerting (issue 16, item 9): capped event streams, paged track
and alert lists, record reads on their own connection. Real uvicorn, SQLite and
PostgreSQL records."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest

from tagwatch.feed import EventHub, create_app, record_actions
from tagwatch.record import Batch, Entry, Record
from tests.daemon_harness import record_db  # noqa: F401  (fixture)
from tests.record_db import RecordDb
from tests.test_feed_api import OP, USERS, VIEW, serve
from tests.test_notify_policy import alert
from zones import ZoneSet


def _app(record: Record, **limits):
    hub = EventHub()
    on_ack, on_resolve = record_actions(record, hub)
    return create_app(record=record, zones_provider=lambda: ZoneSet([]), users=USERS, hub=hub,
                      on_ack=on_ack, on_resolve=on_resolve, health=lambda: {"ready": True},
                      metrics=lambda: b"", **limits)


@pytest.fixture
def record(record_db: RecordDb):  # noqa: F811
    rec = Record.open(record_db.url)
    yield rec
    rec.close()


def test_event_streams_beyond_the_caps_are_refused(record: Record):
    with serve(_app(record, sse_max_clients=3, sse_max_per_user=2)) as url, \
            httpx.Client(base_url=url, timeout=10) as client, contextlib.ExitStack() as open_:
        def stream(headers: dict) -> httpx.Response:
            return open_.enter_context(client.stream("GET", "/api/events", headers=headers))

        first = stream(OP)
        assert first.status_code == 200 and stream(OP).status_code == 200
        refused = stream(OP)  # the operator's third
        assert refused.status_code == 429 and refused.headers["retry-after"]
        assert stream(VIEW).status_code == 200  # three in all now
        assert stream(VIEW).status_code == 503  # the viewer may, the server may not
        first.close()
        # Once the server has seen the first stream go, there is room again.
        deadline = time.monotonic() + 10
        while True:
            with client.stream("GET", "/api/events", headers=VIEW) as answer:
                if answer.status_code == 200:
                    break
                assert answer.status_code == 503
            assert time.monotonic() < deadline, "the closed stream was never let go"
            time.sleep(0.05)


def _fixes(record: Record, tag: str, n: int, t0: float) -> None:
    """n fixes, two at each time stamp (a page may end between the two)."""
    entries = [Entry(f"tag:{tag}", "fix", {"tag": tag, "ts": t0 + i // 2, "lon": -0.1,
                                          "lat": 51.5 + i * 1e-6, "acc": 5.0},
                     tag=tag, event_ts=t0 + i // 2) for i in range(n)]
    record.commit(Batch(entries=entries), time.time())


def test_a_huge_track_is_paged(record: Record):
    t0 = time.time() - 7200
    _fixes(record, "T-9", 12_001, t0)
    with serve(_app(record)) as url, httpx.Client(base_url=url, timeout=30) as client:
        since = {"since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 - 1))}
        assert client.get("/api/tags/T-9/track", params={**since, "limit": 50_001},
                          headers=VIEW).status_code == 400
        first = client.get("/api/tags/T-9/track", params=since, headers=VIEW)
        assert first.status_code == 200
        assert len(first.json()["features"]) <= 10_000 and first.json().get("next")
        lats, cursor, pages = [], None, 0
        while True:
            params = {**since, "limit": 5_000, **({"after": cursor} if cursor else {})}
            page = client.get("/api/tags/T-9/track", params=params, headers=VIEW)
            assert page.status_code == 200, page.text
            body = page.json()
            points = [f for f in body["features"] if f["geometry"]["type"] == "Point"]
            lats += [p["geometry"]["coordinates"][1] for p in points]
            pages += 1
            cursor = body.get("next")
            if cursor is None:
                break
            assert page.headers["x-next-after"] == cursor
        assert pages == 3
        assert len(lats) == 12_001 and lats == sorted(lats)  # all, once, in order


def test_the_alert_list_is_paged(record: Record):
    for n in range(1, 6):
        rec = alert(n)
        record.commit(Batch(entries=[Entry("case:C-0001", "alert", rec, tag="T-1001",
                                           event_ts=time.time(), alert_id=rec["id"])]),
                      time.time())
    with serve(_app(record)) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/api/alerts?limit=10001", headers=VIEW).status_code == 400
        ids, before = [], None
        while True:
            page = client.get("/api/alerts", headers=VIEW,
                              params={"limit": 2, **({"before": before} if before else {})})
            ids += [a["id"] for a in page.json()]
            before = page.headers.get("x-next-before")
            if before is None:
                break
        assert ids == [alert(n)["id"] for n in range(5, 0, -1)]


def test_a_read_in_progress_does_not_hold_up_a_commit(record: Record):
    reading, done = threading.Event(), threading.Event()

    def long_read() -> None:
        with record.reading() as db:
            db.query("SELECT count(*) FROM entries")
            reading.set()
            done.wait(30)  # the read transaction stays open until the commit is in

    reader = threading.Thread(target=long_read, daemon=True)
    reader.start()
    assert reading.wait(10)
    committed = threading.Event()

    def commit() -> None:
        rec = alert(7)
        record.commit(Batch(entries=[Entry("case:C-0001", "alert", rec, tag="T-1001",
                                           event_ts=time.time(), alert_id=rec["id"])]),
                      time.time())
        committed.set()

    writer = threading.Thread(target=commit, daemon=True)
    writer.start()
    try:
        assert committed.wait(10), "the commit waited for the read"
    finally:
        done.set()
        reader.join(10)
        writer.join(10)
    assert record.latest_alerts()[0]["id"] == alert(7)["id"]
