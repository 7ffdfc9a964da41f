"""The dashboard feed's HTTP API (DESIGN 3.8) served by a real uvicorn on a free port.

Alerts come from the real pipeline: a breach fix is processed, its records and the fix
are committed to a SQLite record and published to the hub, as the daemon does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from tagwatch.config import FeedUser, Rules
from tagwatch.engine.alerts import to_dict
from tagwatch.feed import EventHub, create_app, record_actions
from tagwatch.feed.cases import cases_view
from tagwatch.feed.stream import RETRY_MS, event_stream
from tagwatch.notify.records import escalated_record
from tagwatch.pipeline import Inbound, Pipeline
from tagwatch.record import Batch, Entry, OutboxItem, Record
from tagwatch.wire import Topics
from zones import ZoneSet, load_cases

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_TOKEN, VIEWER_TOKEN = "op-secret-token", "viewer-secret-token"
HOME = (-0.1275, 51.5073)  # inside zone "home" of case C-0001
TAG = "T-1001"


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


USERS = (FeedUser("duty-operator", "operator", _sha(OPERATOR_TOKEN)),
         FeedUser("watcher", "viewer", _sha(VIEWER_TOKEN)))
OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VIEW = {"Authorization": f"Bearer {VIEWER_TOKEN}"}


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextmanager
def serve(app) -> Iterator[str]:
    """Run app on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=1)
    server = _Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert server.ready.wait(10), "uvicorn did not start within 10 s"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Feed:
    url: str
    record: Record
    hub: EventHub
    pipeline: Pipeline

    def fix(self, lon: float, lat: float, ts: float, tag: str = TAG,
            source: str = "tags") -> list[dict]:
        """What the daemon does with one fix: rules, commit (fix + records), publish.
        source "victims": a victim device's fix (tag = the device id)."""
        payload = json.dumps({"ts": ts, "lon": lon, "lat": lat, "acc": 5}).encode()
        now = time.time()
        result = self.pipeline.process([Inbound(f"tagwatch/v1/{source}/{tag}/fix", payload, now)],
                                       raised=now)
        records = [to_dict(r) for r in result.records]
        entries = [] if source == "victims" else [  # the daemon records no victim position
            Entry("tag:" + tag, "fix", {"tag": tag, "ts": ts, "lon": lon, "lat": lat, "acc": 5},
                  tag=tag, event_ts=ts)]
        entries += [Entry(f"case:{r['case']}", "alert", r, tag=r["tag"], event_ts=ts,
                          alert_id=r["id"]) for r in records]
        self.record.commit(Batch(entries=entries), recorded_at=now)
        for r in records:
            self.hub.publish(r)
        return records

    def owntracks_fix(self, device: str, lon: float, lat: float, ts: float) -> None:
        """A victim phone's OwnTracks location (`device` = "USER/DEVICE"), as the daemon
        takes it; the daemon records no victim position."""
        payload = json.dumps({"_type": "location", "tst": int(ts), "lon": lon, "lat": lat,
                              "acc": 5}).encode()
        now = time.time()
        self.pipeline.process([Inbound(f"owntracks/{device}", payload, now)], raised=now)

    def breach(self, ts: float) -> dict:
        """Fixes inside home 30 s apart, the last at `ts` (independent evidence, DESIGN
        3.6): a confirmed zone.breach, or confirmed already by a walk in along the tag's
        track; returns its latest record."""
        records = self.fix(*HOME, ts - 30) + self.fix(*HOME, ts)
        return [r for r in records if r["type"] == "zone.breach"][-1]


def make_app(record: Record, hub: EventHub, zoneset: ZoneSet, tile_url: str | None = None,
             device_position=None, cases=None):
    on_ack, on_resolve = record_actions(record, hub)
    return create_app(
        record=record, zones_provider=lambda: zoneset, users=USERS, hub=hub,
        on_ack=on_ack, on_resolve=on_resolve,
        health=lambda: {"ready": True, "broker": "connected", "record": "writing"},
        metrics=lambda: b"# TYPE tagwatch_up gauge\ntagwatch_up 1\n", tile_url=tile_url,
        device_position=device_position, cases_view=cases)


@contextmanager
def running_feed(tmp_path: Path, hub: EventHub | None = None,
                 tile_url: str | None = None) -> Iterator[Feed]:
    record = Record.open(f"sqlite://{tmp_path}/record.db")
    zoneset = ZoneSet(load_cases(ROOT / "config" / "cases").cases)
    hub = hub or EventHub()
    pipeline = Pipeline(zoneset, Rules(), Topics(owntracks="owntracks"), event_clock=False)

    def device_position(device: str) -> tuple[float, float, float] | None:
        state = pipeline.engine.devices.get(device)  # as the daemon gives it
        return None if state is None else (state.ts, state.lon, state.lat)

    try:
        def cases() -> list[dict]:  # as the daemon gives it
            return cases_view(pipeline.engine, zoneset.cases, time.time())

        with serve(make_app(record, hub, zoneset, tile_url, device_position, cases)) as url:
            yield Feed(url, record, hub, pipeline)
    finally:
        record.close()


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[Feed]:
    with running_feed(tmp_path) as f:
        yield f


@pytest.fixture
def client(feed: Feed) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=feed.url, timeout=5) as c:
        yield c


# --- SSE reading -------------------------------------------------------------------------

class SSE:
    """A minimal SSE reader over an httpx stream: (id, data) of each event."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()
        self.last_id: str | None = None

    def next(self) -> tuple[str | None, dict | None]:
        event_id, data = None, None
        for line in self.lines:
            if line == "":
                if event_id is not None or data is not None:
                    if event_id is not None:
                        self.last_id = event_id
                    return event_id, data
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                event_id = value
            elif name == "data":
                data = json.loads(value)
        raise AssertionError("the event stream ended")


@contextmanager
def events(url: str, headers: dict | None = None, read_timeout: float = 2.0) -> Iterator[SSE]:
    timeout = httpx.Timeout(5, read=read_timeout)
    with httpx.Client(timeout=timeout) as c, \
            c.stream("GET", f"{url}/api/events", headers={**OP, **(headers or {})}) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        yield SSE(resp)


# --- auth ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/alerts", "/api/events", "/api/tags/T-1001/track",
                                  "/api/cases/C-0001/zones", "/api/alerts/a1/deliveries",
                                  "/api/alerts/a1/victim"])
def test_api_needs_a_valid_token(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 401
    bad = client.get(path, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == "Bearer"
    assert "unknown bearer token" in bad.json()["error"]


def test_query_token_is_accepted_only_on_the_event_stream(client: httpx.Client) -> None:
    assert client.get(f"/api/alerts?access_token={OPERATOR_TOKEN}").status_code == 401
    with client.stream("GET", f"/api/events?access_token={VIEWER_TOKEN}") as resp:
        assert resp.status_code == 200


def test_viewer_may_read_but_not_act(feed: Feed, client: httpx.Client) -> None:
    alert = feed.breach(time.time() - 60)
    assert client.get("/api/alerts", headers=VIEW).status_code == 200
    for action in ("ack", "resolve"):
        resp = client.post(f"/api/alerts/{alert['id']}/{action}", json={"note": "x"},
                           headers=VIEW)
        assert resp.status_code == 403
        assert "watcher" in resp.json()["error"]
    assert feed.record.latest_alerts()[0]["state"] == alert["state"]


def test_open_paths_need_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["record"] == "writing" and ready.json()["feed"]["clients"] == 0
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "tagwatch_up 1" in metrics.text
    page = client.get("/")
    assert page.status_code == 200 and "<title>tagwatch" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_readyz_is_503_when_not_ready(tmp_path: Path) -> None:
    record = Record.open(f"sqlite://{tmp_path}/r.db")
    app = create_app(record=record, zones_provider=lambda: ZoneSet([]), users=USERS,
                     hub=EventHub(), on_ack=lambda *a: {}, on_resolve=lambda *a: {},
                     health=lambda: {"ready": False, "record": "unavailable"},
                     metrics=lambda: b"")
    with serve(app) as url:
        resp = httpx.get(f"{url}/readyz")
    record.close()
    assert resp.status_code == 503 and resp.json()["record"] == "unavailable"


# --- alerts, ack, resolve ------------------------------------------------------------------

def test_alerts_list_latest_record_of_each_newest_first(feed: Feed, client: httpx.Client) -> None:
    breach = feed.breach(time.time() - 120)
    feed.fix(-0.1275, 51.5095, time.time() - 30)  # outside again, within warn_m
    alerts = client.get("/api/alerts", headers=OP).json()
    ids = [a["id"] for a in alerts]
    assert len(ids) == len(set(ids)), "one record per alert"
    assert breach["id"] in ids
    latest = next(a for a in alerts if a["id"] == breach["id"])
    assert latest == feed.record.latest_alerts()[ids.index(breach["id"])]
    assert alerts == feed.record.latest_alerts(), "newest first, as the record orders them"
    resp = client.get("/api/alerts?state=open", headers=OP)
    assert resp.status_code == 200
    assert all(a["state"] != "resolved" for a in resp.json())
    assert int(resp.headers["x-last-event-id"]) >= 0
    assert client.get("/api/alerts?state=bogus", headers=OP).status_code == 400


def test_ack_records_who_and_when_and_publishes(feed: Feed, client: httpx.Client) -> None:
    alert = feed.breach(time.time() - 60)
    with events(feed.url) as stream:
        resp = client.post(f"/api/alerts/{alert['id']}/ack",
                           json={"note": "called police control"}, headers=OP)
        assert resp.status_code == 200
        acked = resp.json()
        assert acked["state"] == "acknowledged" and acked["id"] == alert["id"]
        assert "duty-operator" in acked["detail"]
        _, published = stream.next()
    assert published == acked
    history = feed.record.alert_history(alert["id"])
    action = next(e for e in history if e["kind"] == "action")
    assert action["body"]["by"] == "duty-operator"
    assert action["body"]["note"] == "called police control"
    assert action["body"]["at"].endswith("Z")
    assert history[-1]["body"] == acked


def test_resolve_then_conflict_and_unknown(feed: Feed, client: httpx.Client) -> None:
    alert = feed.breach(time.time() - 60)
    with events(feed.url) as stream:
        resp = client.post(f"/api/alerts/{alert['id']}/resolve", json={"note": "false alarm"},
                           headers=OP)
        assert resp.status_code == 200
        resolved = resp.json()
        assert stream.next()[1] == resolved
    assert resolved["state"] == "resolved"
    assert feed.record.latest_alerts()[0] == resolved
    assert resolved["id"] not in [a["id"] for a in
                                  client.get("/api/alerts?state=open", headers=OP).json()]
    actions = [e["body"] for e in feed.record.alert_history(alert["id"]) if e["kind"] == "action"]
    assert actions[-1]["action"] == "resolve" and actions[-1]["by"] == "duty-operator"
    for action in ("ack", "resolve"):
        again = client.post(f"/api/alerts/{alert['id']}/{action}", json={"note": ""},
                            headers=OP)
        assert again.status_code == 409, again.text
    missing = client.post("/api/alerts/0123456789abcdef01234567/ack", json={"note": ""},
                          headers=OP)
    assert missing.status_code == 404
    assert "0123456789abcdef01234567" in missing.json()["error"]
    bad = client.post(f"/api/alerts/{alert['id']}/ack", json={"note": 5}, headers=OP)
    assert bad.status_code == 400


def queue_sms(record: Record, alert: dict, phone: str, result: dict | None) -> int:
    """An SMS outbox row for the alert, as the policy queues it; done with result if given."""
    body = {"kind": "sms", "text": f"Alert {alert['id']}", "case": alert["case"],
            "victim": "V-01", "tag": alert["tag"]}
    record.commit(Batch(outbox=[OutboxItem(alert["id"], "sms", phone, body, 0.0)]), time.time())
    row = [r for r in record.outbox_due(time.time()) if r.alert_id == alert["id"]][-1]
    if result is not None:
        record.outbox_done(row.id, result)
    return row.id


def test_deliveries_of_an_alert_without_phone_numbers(feed: Feed, client: httpx.Client) -> None:
    alert = feed.breach(time.time() - 60)
    row = queue_sms(feed.record, alert, "+447700900123", {"sid": "SM9", "status": "delivered"})
    feed.record.commit(Batch(outbox=[OutboxItem(alert["id"], "mqtt", "tagwatch/v1/alerts/C",
                                                {"payload": "x"}, 0.0)]), time.time())
    resp = client.get(f"/api/alerts/{alert['id']}/deliveries", headers=VIEW)
    assert resp.status_code == 200
    [sms] = resp.json()  # the mqtt row is not a delivery to a person
    assert sms["row"] == row and sms["channel"] == "sms" and sms["status"] == "done"
    assert sms["delivery"] == "delivered" and sms["sid"] == "SM9" and sms["victim"] == "V-01"
    assert "7700900123" not in resp.text
    assert resp.json() == feed.record.deliveries(alert["id"])
    quiet = {**alert, "id": "quiet0000000000000000001"}  # an alert nobody was told of
    feed.record.commit(Batch([Entry("case:C-0001", "alert", quiet, alert_id=quiet["id"])]),
                       time.time())
    assert client.get(f"/api/alerts/{quiet['id']}/deliveries", headers=OP).json() == []
    missing = client.get("/api/alerts/0123456789abcdef01234567/deliveries", headers=OP)
    assert missing.status_code == 404
    assert "0123456789abcdef01234567" in missing.json()["error"]


# --- event stream --------------------------------------------------------------------------

def test_breach_reaches_a_connected_client_within_a_second(feed: Feed) -> None:
    with events(feed.url, read_timeout=1.0) as stream:
        started = time.monotonic()
        feed.fix(*HOME, time.time() - 5)  # the first fix inside: a probable breach
        event_id, record = stream.next()
        elapsed = time.monotonic() - started
    assert record["type"] == "zone.breach" and record["tag"] == TAG
    assert event_id is not None and int(event_id) > 0
    assert elapsed < 1.0


def _publish_series(hub: EventHub, n: int, start: int = 0) -> list[int]:
    return [hub.publish({"id": f"a{i:04d}", "state": "open", "n": i})
            for i in range(start, start + n)]


def test_resume_from_last_event_id_without_gaps_or_repeats(feed: Feed) -> None:
    with events(feed.url) as stream:
        ids = _publish_series(feed.hub, 10)
        got = [stream.next() for _ in range(4)]
    assert [int(i) for i, _ in got] == ids[:4]
    assert ids == sorted(ids) and len(set(ids)) == 10, "ids strictly increase"
    more = _publish_series(feed.hub, 5, start=10)  # published while disconnected
    with events(feed.url, {"Last-Event-ID": got[-1][0]}) as stream:
        resumed = [stream.next() for _ in range(11)]
        live = _publish_series(feed.hub, 1, start=15)
        last = stream.next()
    assert [int(i) for i, _ in resumed] == ids[4:] + more
    assert [d["n"] for _, d in resumed] == list(range(4, 15))
    assert int(last[0]) == live[0] and last[1]["n"] == 15


def test_stream_without_last_event_id_starts_with_what_comes_next(feed: Feed) -> None:
    _publish_series(feed.hub, 3)
    with events(feed.url) as stream:
        new = _publish_series(feed.hub, 1, start=3)
        event_id, data = stream.next()
    assert int(event_id) == new[0] and data["n"] == 3


def test_resume_older_than_the_ring_falls_back_to_the_record(tmp_path: Path) -> None:
    with running_feed(tmp_path, EventHub(ring_size=2)) as feed:
        # The victim's phone 2 km away and fresh: protection is well, no record of it.
        feed.fix(HOME[0] + 0.03, HOME[1], time.time() - 31, tag="VD-01", source="victims")
        first = feed.fix(*HOME, time.time() - 30)[0]  # probable breach (event 1)
        old_id = feed.hub.last_id
        confirmed = feed.fix(*HOME, time.time() - 20)  # events 2.. push event 1 out
        _publish_series(feed.hub, 3)  # the ring now holds none of the breach events
        with events(feed.url, {"Last-Event-ID": str(old_id)}) as stream:
            event_id, data = stream.next()
            assert event_id is None, "fallback records carry no id"
            assert data["id"] == first["id"]
            assert data == [c for c in confirmed if c["id"] == first["id"]][-1]
            mark_id, mark = stream.next()
            assert mark is None and int(mark_id) == feed.hub.last_id
            live = _publish_series(feed.hub, 1, start=9)
            assert stream.next() == (str(live[0]), {"id": "a0009", "state": "open", "n": 9})


def test_slow_client_is_dropped_and_resumes_from_the_ring() -> None:
    async def scenario() -> None:
        hub = EventHub(client_queue=5)
        slow, fast = hub.subscribe(None), hub.subscribe(None)
        ids = []
        for i in range(20):  # the fast reader keeps up, the slow one never reads
            ids += _publish_series(hub, 1, start=i)
            assert (await fast.subscription.queue.get()).id == ids[-1]
        assert slow.subscription.overflowed
        assert hub.stats()["dropped_clients"] == 1 and hub.stats()["clients"] == 1
        chunks = [c async for c in event_stream(slow, None, _no_fallback)]
        assert chunks == [f"retry: {RETRY_MS}\n\n"], "the stream ends; the browser reconnects"
        resume = hub.subscribe(ids[4])
        assert resume.exact and [e.id for e in resume.backlog] == ids[5:]

    asyncio.run(scenario())


async def _no_fallback(last_id: int) -> list:
    raise AssertionError(f"no fallback expected (last id {last_id})")


# --- map -----------------------------------------------------------------------------------

def test_track_geojson(feed: Feed, client: httpx.Client) -> None:
    t0 = time.time() - 600
    feed.fix(-0.1300, 51.5060, t0)
    feed.fix(-0.1290, 51.5065, t0 + 30)
    feed.fix(*HOME, t0 + 60)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 10))
    resp = client.get(f"/api/tags/{TAG}/track", params={"since": since}, headers=OP)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["type"] == "FeatureCollection" and doc["tag"] == TAG
    assert [f["geometry"]["coordinates"] for f in doc["features"]] == [
        [-0.1290, 51.5065], [*HOME]]
    assert doc["features"][0]["properties"]["acc"] == 5
    bad = client.get(f"/api/tags/{TAG}/track", params={"since": "yesterday"}, headers=OP)
    assert bad.status_code == 400 and "since" in bad.json()["error"]
    naive = since.removesuffix("Z")  # no offset: whose clock? refused, not guessed
    bad = client.get(f"/api/tags/{TAG}/track", params={"since": naive}, headers=OP)
    assert bad.status_code == 400 and "offset" in bad.json()["error"]


def test_zones_geojson_with_warning_rings(client: httpx.Client) -> None:
    doc = client.get("/api/cases/C-0001/zones", headers=VIEW).json()
    assert doc["type"] == "FeatureCollection" and doc["case"] == "C-0001"
    by = {(f["properties"]["zone"], f["properties"]["role"]): f for f in doc["features"]}
    assert set(by) == {(z, r) for z in ("home", "work", "school") for r in ("zone", "warn")}
    school = by[("school", "warn")]
    assert school["geometry"]["type"] == "Point"
    assert school["properties"]["radius_m"] == 150 + 300
    ring = by[("home", "warn")]["geometry"]["coordinates"][0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    # home spans lon -0.1280..-0.1270 at 51.507; a 250 m ring reaches about 0.0036 deg
    # of longitude and 0.00225 deg of latitude further out.
    assert min(lons) == pytest.approx(-0.1280 - 250 / (111_320 * 0.6224), abs=2e-5)
    assert max(lats) == pytest.approx(51.5076 + 250 / 111_260, abs=2e-5)
    assert client.get("/api/cases/C-9999/zones", headers=OP).status_code == 404


def test_victim_device_position_only_through_an_alert_about_the_victim(
        feed: Feed, client: httpx.Client) -> None:
    """A proximity alert (zone null) gives the victim device's last position, from the
    engine (victim positions are not recorded); a zone's alert gives none."""
    # long enough before the breach below that it is not judged as a jump from there
    feed.fix(-0.1100, 51.4985, time.time() - 930, tag="VD-01", source="victims")
    records = feed.fix(-0.1100, 51.4980, time.time() - 920)
    (near,) = [r for r in records if r["type"] == "proximity"]
    answer = client.get(f"/api/alerts/{near['id']}/victim", headers=VIEW)
    assert answer.status_code == 200
    found = answer.json()
    assert (found["victim"], found["lat"], found["lon"]) == ("V-01", 51.4985, -0.1100)
    assert found["age_s"] >= 0 and set(found) == {"victim", "lat", "lon", "ts", "age_s"}
    breach = feed.breach(time.time() - 10)
    zone = client.get(f"/api/alerts/{breach['id']}/victim", headers=OP).json()
    assert zone == {"victim": "V-01", "lat": None, "lon": None, "ts": None, "age_s": None}
    assert client.get("/api/alerts/nope/victim", headers=OP).status_code == 404
    assert client.get(f"/api/alerts/{near['id']}/victim").status_code == 401


def test_ack_and_resolve_keep_the_fix_time_and_the_level(feed: Feed,
                                                         client: httpx.Client) -> None:
    """`ts` stays the time of the fix the alert is about (not the ack's, nor an
    escalation's deadline); `raised` is the action's; the level reached is kept."""
    alert = feed.breach(time.time() - 600)
    escalated = escalated_record(alert, 2, "not acknowledged within 240 s",
                                 time.time() - 300, time.time() - 300)
    feed.record.commit(Batch(entries=[Entry(f"case:{alert['case']}", "alert", escalated,
                                            tag=TAG, event_ts=time.time() - 300,
                                            alert_id=alert["id"])]), time.time())
    acked = client.post(f"/api/alerts/{alert['id']}/ack", headers=OP, json={"note": ""}).json()
    assert acked["ts"] == alert["ts"] and acked["raised"] > escalated["raised"]
    assert acked["escalation"] == 2
    done = client.post(f"/api/alerts/{alert['id']}/resolve", headers=OP, json={}).json()
    assert done["ts"] == alert["ts"] and done["escalation"] == 2
