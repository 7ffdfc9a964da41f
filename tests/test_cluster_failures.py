"""Failures under running workers, on a real three-node NATS cluster and a real PostgreSQL
(issue 20, "what it must show"; docs/CLUSTER.md has the figures these tests print).

Two workers serve eight cases (one tag each, spread over the partitions) while a tag
publisher sends every tag's walk in and out of its victim's home, QoS 1, through a node
of its own, failing over to the next node and sending again whatever was not PUBACKed
(at least once, as a tag's firmware does). Then one of:

- kill -9 of a NATS node: the publisher's, the workers', or the one leading NATS's
  internal `$MQTT_msgs` stream (the one holding every QoS 1 message);
- a rolling restart of both workers: a replacement started, the old one stopped, one by
  one.

And one takeover made to order: the previous holder was handed fixes it never
acknowledged (the takeover hold must put them back before the newer ones).

What must hold: every PUBACKed fix is in the record, and once (duplicates absorbed); the
alerts published are exactly those `tagwatch replay` gives for the same fixes (so no
redelivered fix turned into a spurious `zone.late_breach`), none opened twice; NATS holds
nothing unacknowledged at the end; `tagwatch record verify` is intact.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tagwatch.ingest.leases import Leases
from tagwatch.ingest.partitions import partition_of
from tagwatch.record import Record
from tests import test_cluster_failover as failover
from tests.daemon_harness import EXAMPLE_CASES, Daemon, breach_fixes
from tests.daemon_harness import Publisher as DaemonPublisher
from tests.nats_cluster import NatsCluster
from tests.record_db import RecordDb
from tests.test_cluster_failover import (
    PREFIX,
    _opened,
    _partitions,
    _unacknowledged,
    _until,
    _worker,
    replayed,
)
from tests.test_daemon_crash import stream
from tests.test_nats_cluster import Publisher
from tests.twilio_server import Answer, TwilioServer

# the fixtures of the failover tests: a fresh NATS cluster, PostgreSQL schema, Twilio
cluster, pg, twilio = failover.cluster, failover.pg, failover.twilio

CYCLES = 3  # walks in and out of home per tag (18 fixes each, 10 s apart in event time)
RATE = 80.0  # fixes a second from the publisher: the 432 fixes take about 5 s
# Up to 576 fixes at 10 a second, about 58 s, halted when the restart is over: the whole
# rolling restart happens under them. (The walks end 30 s before they are generated and
# start 12 min before: older than the tags' no_comms_s, 15 min, the daemon's wall-clock
# watchdog would raise tag.no_comms.)
ROLLING_CYCLES, ROLLING_RATE = 4, 10.0


def _tags(n: int, k: int) -> list[str]:
    """n tag ids in n different partitions (so both workers serve some)."""
    tags, used = [], set()
    for i in range(1000, 2000):
        tag = f"T-{i}"
        if partition_of(tag, k) not in used:
            used.add(partition_of(tag, k))
            tags.append(tag)
            if len(tags) == n:
                return tags
    raise AssertionError("not enough partitions")


def _cases(tmp_path: Path, tags: list[str]) -> Path:
    """One copy of the example case C-0001 per tag (same zones; no victim device)."""
    folder = tmp_path / "cases"
    folder.mkdir()
    example = json.loads((EXAMPLE_CASES / "C-0001.geojson").read_text())
    for i, tag in enumerate(tags):
        case = json.loads(json.dumps(example))
        case["case"]["id"] = f"C-9{i:03d}"
        case["case"]["tags"] = [tag]
        victim = case["case"]["victims"][0]
        victim.pop("device", None)
        victim["phone"] = f"+4477009{i:05d}"
        (folder / f"C-9{i:03d}.geojson").write_text(json.dumps(case))
    return folder


def _messages(tags: list[str], cycles: int) -> list[tuple[str, dict]]:
    """Each tag's walk (tests.test_daemon_crash.stream), the tags interleaved in time."""
    now = time.time()
    walks = [stream(now - i, cycles) for i in range(len(tags))]
    return [(f"{PREFIX}/tags/{tag}/fix", walk[j])
            for j in range(len(walks[0])) for tag, walk in zip(tags, walks, strict=True)]


class Alerts:
    """Every alert record published, through a persistent session that moves to another
    node when its node dies (NATS keeps the session's QoS 1 messages meanwhile)."""

    def __init__(self, cluster: NatsCluster, node: int) -> None:
        self.cluster = cluster
        self.node = node
        self.bodies: list[bytes] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2,
                             client_id=f"alerts-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv311, clean_session=False)
        client.reconnect_delay_set(0.1, 0.5)
        client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/alerts/#", 1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        client.on_disconnect = lambda c, *_: self._next_node(c)
        client.on_connect_fail = lambda c, *_: self._next_node(c)
        client.connect("127.0.0.1", cluster.mqtt_port(node), 5)
        client.loop_start()
        self.client = client
        if not subscribed.wait(10):
            raise TimeoutError("alerts: no SUBACK")

    def _next_node(self, client: paho.Client) -> None:
        """paho reconnects to _host/_port: make that the next node (as the daemon does)."""
        self.node = (self.node + 1) % len(self.cluster.nodes)
        client._host, client._port = "127.0.0.1", self.cluster.mqtt_port(self.node)

    def _on_message(self, _c, _u, m: paho.MQTTMessage) -> None:
        with self.cond:
            self.bodies.append(bytes(m.payload))
            self.cond.notify_all()

    def ids(self) -> set[str]:
        with self.cond:
            return {json.loads(b)["id"] for b in self.bodies}

    def wait_ids(self, want: set[str], timeout_s: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: {json.loads(b)["id"] for b in self.bodies} >= want,
                                      timeout_s):
                raise AssertionError(f"alert ids not published in {timeout_s} s: "
                                     f"{sorted(want - self.ids())}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _recorded(pg: RecordDb) -> Counter:
    """How many times each fix (tag, event time) is in the record."""
    return Counter((tag, round(ts, 3)) for tag, ts in
                   pg.raw("SELECT tag, event_ts FROM entries WHERE kind = 'fix'"))


def _acked_fixes(messages: list[tuple[str, dict]],
                 publisher: Publisher) -> set[tuple[str, float]]:
    return {(messages[i][0].split("/")[-2], round(messages[i][1]["ts"], 3))
            for i in publisher.acked}


def _types(records: list[dict]) -> Counter:
    """Alert records opened, by type (the ids say which; the types say what differs)."""
    return Counter(r["type"] for r in records if r["state"] == "open")


def _published_opens(alerts: Alerts) -> list[dict]:
    seen: dict[str, dict] = {}
    with alerts.cond:
        for body in alerts.bodies:
            record = json.loads(body)
            if record["state"] == "open":
                seen.setdefault(record["id"], record)
    return list(seen.values())


class Load:
    """The publisher sending every tag's fixes in a thread, failing over between nodes."""

    def __init__(self, cluster: NatsCluster, node: int, messages: list[tuple[str, dict]],
                 rate: float = RATE):
        self.messages = messages
        self.publisher = Publisher(cluster, node, window=10, rate=rate)
        payloads = [(t, json.dumps(f).encode()) for t, f in messages]
        self.thread = threading.Thread(target=self.publisher.run, args=(payloads,), daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    def join(self, timeout_s: float = 60) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the publisher did not finish"

    def halt(self) -> None:
        """Stop after the current window: the fixes sent are then a prefix, all PUBACKed."""
        self.publisher.halt.set()
        self.join()
        self.messages = self.messages[:self.publisher.sent]

    def acked(self) -> set[tuple[str, float]]:
        return _acked_fixes(self.messages, self.publisher)


def _check(cluster: NatsCluster, pg: RecordDb, load: Load, alerts: Alerts,
           want: list[dict], workers: list[Daemon]) -> dict:
    """Everything the tests require after the failure; returns the figures to report."""
    acked = load.acked()
    assert len(acked) == len(load.messages)  # the publisher sends again until PUBACKed
    _until(lambda: acked <= set(_recorded(pg)), "every PUBACKed fix recorded", 30)
    want_ids = {r["id"] for r in want}
    try:
        alerts.wait_ids(want_ids, 30)
    except AssertionError:
        missing = [r for r in want if r["id"] not in alerts.ids()]
        extra = [r for r in _published_opens(alerts) if r["id"] not in want_ids]
        print("missing", missing, "\nextra", extra)
        raise
    _until(lambda: _unacknowledged(cluster) == 0, "no fix left unacknowledged", 15)
    recorded = _recorded(pg)
    assert set(recorded) == acked
    assert [f for f, n in recorded.items() if n > 1] == [], "a fix committed twice"
    published = _published_opens(alerts)
    assert _types(published) == _types(want)  # e.g. a late breach instead of a breach
    assert alerts.ids() == want_ids
    opened = _opened(pg)
    assert [i for i, n in opened.items() if n > 1] == [], "an alert opened twice"
    assert set(opened) == want_ids
    with alerts.cond:
        twice = sum(n - 1 for n in Counter(alerts.bodies).values())
    duplicates = sum(w.metric("tagwatch_duplicates_total") for w in workers
                     if w.proc is not None and w.proc.poll() is None)
    return {"fixes": len(acked), "lost": len(acked - set(recorded)),
            "duplicates_absorbed": duplicates, "alerts": len(want_ids),
            "alert_messages_delivered_twice": twice,
            "late": _late(pg),
            "publisher_failovers_s": [round(s, 1) for s in load.publisher.failovers]}


@pytest.mark.parametrize("victim", ["publisher", "worker", "stream-leader"])
def test_kill_9_of_a_nats_node_under_the_workers_loses_and_doubles_nothing(
    victim: str, tmp_path: Path, cluster: NatsCluster, pg: RecordDb,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tags = _tags(8, cluster.partitions)
    cases = _cases(tmp_path, tags)
    messages = _messages(tags, CYCLES)
    want = replayed(tmp_path, messages, cases)
    # Three roles on three nodes: the $MQTT_msgs leader, the workers' node, the publisher's.
    leader = cluster.stream_leader("$MQTT_msgs")
    assert leader is not None
    on = {"worker": (leader + 1) % 3, "publisher": (leader + 2) % 3}
    order = [on["worker"], (on["worker"] + 1) % 3, (on["worker"] + 2) % 3]
    urls = "mqtt://" + ",".join(f"127.0.0.1:{cluster.mqtt_port(i)}" for i in order)
    workers = [_worker(tmp_path, cluster, pg, n, cases=cases, urls=urls) for n in ("w1", "w2")]
    alerts = Alerts(cluster, on["publisher"])
    load = Load(cluster, on["publisher"], messages)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        _until(lambda: all(len(_partitions(w)) == cluster.partitions // 2 for w in workers),
               "the partitions spread", 30)
        load.start()
        _until(lambda: len(load.publisher.acked) >= len(messages) // 3
               and sum(_recorded(pg).values()) >= len(messages) // 4,
               "a third of the fixes PUBACKed, a quarter recorded", 30)
        killed = {**on, "stream-leader": cluster.stream_leader("$MQTT_msgs")}[victim]
        assert killed is not None
        roles = [r for r, n in {**on, "stream-leader": cluster.stream_leader("$MQTT_msgs")}
                 .items() if n == killed]
        cluster.kill(killed)
        load.join()
        figures = _check(cluster, pg, load, alerts, want, workers)
        for w in workers:
            assert w.stop() == 0
        verify = workers[0].cli("record", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        with capsys.disabled():
            print(f"\n[nats {'.'.join(map(str, cluster.version))}] kill -9 of node "
                  f"n{killed + 1} ({'+'.join(roles)}): {figures}")
    finally:
        for w in workers:
            w.kill()
        alerts.close()


def _late(pg: RecordDb) -> int:
    """Fixes the workers handled as late (older than their tag's latest): replay has none."""
    return sum(1 for (body,) in pg.raw("SELECT body FROM entries WHERE kind = 'fix'")
               if json.loads(body).get("late"))


def _sms_once(pg: RecordDb, twilio: TwilioServer, kills: list[float]) -> dict:
    """Every SMS row due is sent, and each once, except the documented at-least-once at a
    kill -9 (docs/CLUSTER.md): a worker killed after Twilio took an SMS and before it
    marked the row done leaves the row due, and the new owner sends it again. So a
    second copy is allowed only with a kill (time.monotonic(), `kills`) between the two."""
    due = f"SELECT count(*) FROM outbox WHERE channel = 'sms' AND not_before < {time.time()}"
    rows = pg.raw(due)[0][0]
    assert rows > 0
    _until(lambda: pg.raw(due + " AND status = 'done'")[0][0] == rows, "every SMS sent", 20)
    sent: dict[tuple, list[float]] = {}
    for r in twilio.seen:
        if r.path.endswith("/Messages.json"):
            sent.setdefault((r.form.get("To"), r.form.get("Body")), []).append(r.at)
    resent = [m for m, at in sent.items()
              if len(at) == 2 and any(at[0] < k < at[1] for k in kills)]
    twice = [m for m, at in sent.items() if len(at) > 1 and m not in resent]
    rows_of = [r for r in pg.raw("SELECT id, alert_id, partition, status, result, created_at, "
                                 "updated_at FROM outbox WHERE channel = 'sms'")
               if any(r[1].startswith(body[15:21].lower()) for _, body in twice)]
    assert twice == [], f"an SMS sent twice: {twice}, its rows {rows_of}"
    assert len(sent) == rows, (len(sent), rows)
    return {"sms": rows, "sms_resent_after_a_kill": len(resent)}


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_rolling_restart_of_every_worker_under_load_loses_nothing(
    how: str, tmp_path: Path, cluster: NatsCluster, pg: RecordDb, twilio: TwilioServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """w1 and w2 serve; w3 is started and given its share, then w1 stopped (SIGTERM: it
    drains and releases) or killed (-9: its leases expire); then w4 for w2 the same way."""
    tags = _tags(8, cluster.partitions)
    cases = _cases(tmp_path, tags)
    messages = _messages(tags, ROLLING_CYCLES)

    def worker(name: str) -> Daemon:  # made when started: its feed port is free then
        workers[name] = _worker(tmp_path, cluster, pg, name, twilio, cases=cases)
        return workers[name].start()

    workers: dict[str, Daemon] = {}
    kills: list[float] = []
    alerts = Alerts(cluster, 1)
    load = Load(cluster, 2, messages, ROLLING_RATE)
    try:
        for name in ("w1", "w2"):
            worker(name)
        for name in ("w1", "w2"):
            workers[name].wait_ready()
        _until(lambda: all(len(_partitions(workers[n])) == cluster.partitions // 2
                           for n in ("w1", "w2")), "the partitions spread", 30)
        load.start()
        for old, new in (("w1", "w3"), ("w2", "w4")):
            worker(new).wait_ready()
            _until(lambda n=new: _partitions(workers[n]), f"{new} serves partitions", 30)
            if how == "stop":
                assert workers[old].stop() == 0
            else:
                kills.append(time.monotonic())
                workers[old].kill()
            live = [w for n, w in workers.items() if n not in ("w1", old)]
            _until(lambda live=live: sorted(p for w in live for p in _partitions(w))
                   == list(range(cluster.partitions)), f"every partition served after {old}", 30)
        under_load = load.thread.is_alive()
        load.halt()
        want = replayed(tmp_path, load.messages, cases)  # what was sent
        figures = _check(cluster, pg, load, alerts, want, [workers["w3"], workers["w4"]])
        try:
            figures.update(_sms_once(pg, twilio, kills))
        except AssertionError:
            for w in workers.values():  # who held what when
                print(w.config.stem, [line for line in w.logs().splitlines() if any(
                    k in line for k in ("partition_taken", "partition_dropped", "fenced"))])
            raise
        assert under_load, "the restart outlasted the load: lower ROLLING_RATE"
        for name in ("w3", "w4"):
            assert workers[name].stop() == 0
        verify = workers["w3"].cli("record", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        with capsys.disabled():
            print(f"\n[nats {'.'.join(map(str, cluster.version))}] rolling restart ({how}): "
                  f"{figures}")
    finally:
        for w in workers.values():
            w.kill()
        alerts.close()


TAG = "T-1001"


def test_fixes_the_previous_owner_left_unacknowledged_are_handled_before_newer_ones(
    tmp_path: Path, cluster: NatsCluster, pg: RecordDb,
) -> None:
    """At a takeover NATS gives the new owner what the previous one was handed and did
    not acknowledge only when the session's ack_wait runs out: behind the newer fixes
    that flow at once (a breach became a late breach). The previous owner here took the
    leases and died; a bare MQTT client on the partition's session takes C-0001's
    approach and never acknowledges; the worker takes lease and session over, and the
    rest of the walk is sent the moment it does. The alerts must be replay's, and no fix
    handled as late."""
    p = partition_of(TAG, cluster.partitions)
    ghost = Leases(pg.url, "ghost", cluster.partitions, failover.TTL_S)  # the previous owner's
    Record.open(pg.url).close()  # the record's schema first (leases add an outbox column)
    ghost.setup()  # leases: taken, never renewed (it died), so the worker's are epoch 2
    assert p in ghost.round().acquired
    ghost.close()
    fixes = stream(time.time(), cycles=1)  # 160 m north of home to inside, and out again
    topic = f"{PREFIX}/tags/{TAG}/fix"
    want = replayed(tmp_path, [(topic, f) for f in fixes])
    approach, rest = fixes[:9], fixes[9:]
    handed, kicked = threading.Event(), threading.Event()
    got: list[bytes] = []
    old = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"twc-p{p}",
                      protocol=paho.MQTTv311, clean_session=False, manual_ack=True)
    old.reconnect_delay_set(3600, 3600)  # taken over: it stays away
    old.on_connect = lambda c, *_: c.subscribe(f"tw/tags/{p}/+", 1)

    def on_message(_c, _u, m: paho.MQTTMessage) -> None:
        got.append(m.payload)  # never acknowledged
        if len(got) >= len(approach):
            handed.set()

    old.on_message = on_message
    old.on_disconnect = lambda *_: kicked.set()
    old.connect("127.0.0.1", cluster.mqtt_port(0), 30)
    old.loop_start()
    worker = _worker(tmp_path, cluster, pg, "w1")
    alerts = Alerts(cluster, 1)
    tags = DaemonPublisher(cluster.mqtt_url(2))
    try:
        for fix in approach:
            tags.send(topic, fix)
        assert handed.wait(20), f"the old owner got {len(got)} of {len(approach)}"
        worker.start()
        assert kicked.wait(30), "the worker did not take the session over"
        for fix in rest:  # before NATS gives the approach again (ack_wait after handing)
            tags.send(topic, fix)
        _until(lambda: len(_recorded(pg)) == len(fixes), "every fix recorded", 30)
        alerts.wait_ids({r["id"] for r in want}, 30)
        assert _types(_published_opens(alerts)) == _types(want)
        assert alerts.ids() == {r["id"] for r in want}
        assert _late(pg) == 0
        _until(lambda: _unacknowledged(cluster) == 0, "no fix left unacknowledged", 15)
    finally:
        worker.kill()
        old.loop_stop()
        alerts.close()
        tags.close()


def test_a_worker_stopping_with_an_sms_in_flight_keeps_its_lease_until_it_is_sent(
    tmp_path: Path, cluster: NatsCluster, pg: RecordDb, twilio: TwilioServer,
) -> None:
    """A rolling restart's SIGTERM comes while Twilio has not yet answered an SMS: the
    stopping worker must not release the partition before the row is marked done, or
    the next owner finds it pending and texts the victim again."""
    twilio.script(Answer.hang(8.0))  # the breach's SMS is answered 8 s after it is sent
    w1 = _worker(tmp_path, cluster, pg, "w1", twilio)
    alerts = Alerts(cluster, 1)
    tags = DaemonPublisher(cluster.mqtt_url(2))
    w2 = None
    try:
        w1.start().wait_ready()
        _until(lambda: len(_partitions(w1)) == cluster.partitions, "w1 serves all", 30)
        for fix in breach_fixes(TAG):
            tags.send(f"{PREFIX}/tags/{TAG}/fix", fix)
        twilio.wait_for(1, 30, "/Messages.json")  # the SMS is on its way
        w1.signal(signal.SIGTERM)
        w2 = _worker(tmp_path, cluster, pg, "w2", twilio).start()
        w2.wait_ready()
        _until(lambda: len(_partitions(w2)) == cluster.partitions, "w2 serves all", 30)
        assert w1.proc is not None and w1.proc.wait(30) == 0
        sms = "SELECT count(*) FROM outbox WHERE channel = 'sms'"
        _until(lambda: pg.raw(sms + " AND status = 'done'")[0][0] == pg.raw(sms)[0][0],
               "every SMS row done", 30)
        sent = [r.form.get("Body") for r in twilio.seen if r.path.endswith("/Messages.json")]
        assert len(sent) == pg.raw(sms)[0][0] == 1, sent
    finally:
        w1.kill()
        if w2 is not None:
            w2.kill()
        alerts.close()
        tags.close()
