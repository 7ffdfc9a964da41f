"""The broker tier of cluster mode (DESIGN 7) on a real three-node NATS cluster.

Tags publish QoS 1 on ``tagwatch/v1/tags/{tag}/fix`` at any node; the server mapping puts
each in partition ``partition_of(tag, K)``; a worker's persistent session on
``tw/tags/{p}/+`` on another node receives it. A node killed with -9 (the publisher's or
the subscriber's) loses no PUBACKed fix; duplicates and older fixes redelivered behind
newer ones are counted (DESIGN 7 says to expect them), not forbidden.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tagwatch.ingest.partitions import fnv1a_32, partition_of

from .nats_cluster import PARTITIONS, NatsCluster, mqtt_connack, running_cluster


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path / "nats")

WAIT_S = 30.0


def test_fnv1a_32_matches_the_published_test_vectors() -> None:
    # Vectors of the FNV reference (isthe.com/chongo/tech/comp/fnv): Go's hash/fnv New32a.
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_partition_of_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="partition count"):
        partition_of("T-1", 0)
    with pytest.raises(ValueError, match="tag id is empty"):
        partition_of("", 16)
    assert all(0 <= partition_of(f"T-{i}", 7) < 7 for i in range(100))


class Subscriber:
    """A worker's partition session: paho, QoS 1, clean_session=False, movable to a node."""

    def __init__(self, client_id: str, topic: str,
                 auth: tuple[str, str] | None = None) -> None:
        self.client_id = client_id
        self.topic = topic
        self.auth = auth
        self.suback: list[int] = []
        self.received: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()
        self.client: mqtt.Client | None = None
        self.session_present: list[bool] = []

    def connect(self, port: int, subscribe: bool, deadline_s: float = WAIT_S) -> None:
        """Connect (retrying until a CONNACK 0 within the deadline) to the node at port."""
        deadline = time.monotonic() + deadline_s
        while True:
            client, connack = self._try(port)
            if connack is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.client_id}: no CONNACK from port {port}")
        self.client = client
        self.session_present.append(connack)
        if subscribe:
            subacked = threading.Event()

            def on_subscribe(_c: object, _u: object, _m: object,
                             codes: list[mqtt.ReasonCode], _p: object) -> None:
                self.suback = [code.value for code in codes]
                subacked.set()

            client.on_subscribe = on_subscribe
            assert client.subscribe(self.topic, qos=1)[0] == mqtt.MQTT_ERR_SUCCESS
            if not subacked.wait(WAIT_S):
                raise TimeoutError(f"{self.client_id}: no SUBACK for {self.topic}")

    def _try(self, port: int) -> tuple[mqtt.Client, bool | None]:
        connected = threading.Event()
        outcome: dict[str, bool] = {}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=False)

        def on_connect(_c: mqtt.Client, _u: object, flags: mqtt.ConnectFlags,
                       rc: mqtt.ReasonCode, _p: object) -> None:
            if not rc.is_failure:
                outcome["session_present"] = flags.session_present
            connected.set()

        client.on_connect = on_connect
        client.on_message = self._on_message
        if self.auth:
            client.username_pw_set(*self.auth)
        try:
            client.connect("127.0.0.1", port, keepalive=5)
        except OSError:
            return client, None
        client.loop_start()
        connected.wait(5)
        if "session_present" not in outcome:
            client.loop_stop()
            client.disconnect()
            return client, None
        return client, outcome["session_present"]

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.received.append((msg.topic, msg.payload))
            self.changed.notify_all()

    def drop(self) -> None:
        """Stop this connection's network loop (its node was killed, or the test ends)."""
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None

    def wait_for(self, done: Callable[[list[tuple[str, bytes]]], bool],
                 timeout_s: float = WAIT_S) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: done(self.received), timeout_s)


class Publisher:
    """Tags' fixes, QoS 1, in windows; a fix counts once PUBACKed, else it is sent again
    through the next node (at least once, as a tag's firmware does)."""

    def __init__(self, cluster: NatsCluster, node: int, window: int = 50,
                 auth: tuple[str, str] | None = None, rate: float | None = None) -> None:
        """rate: fixes a second at most (a steady stream of tags, not one burst)."""
        self.auth = auth
        self.rate = rate
        self.cluster = cluster
        self.node = node
        self.window = window
        self.acked: set[int] = set()
        self.failovers: list[float] = []  # seconds from losing a node to the next CONNACK
        self.client: mqtt.Client | None = None
        self.lost = threading.Event()
        self.halt = threading.Event()  # set: no window after the current one
        self.sent = 0  # fixes[:sent] are sent and PUBACKed (when run returns)

    def _connect(self, deadline_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + deadline_s
        tried = self.node
        while time.monotonic() < deadline:
            for offset in range(len(self.cluster.nodes)):
                node = (tried + offset) % len(self.cluster.nodes)
                if self.cluster.nodes[node].running and self._try(node):
                    self.node = node
                    return
        raise TimeoutError("publisher: no node gave a CONNACK")

    def _try(self, node: int) -> bool:
        connected = threading.Event()
        self.lost.clear()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"pub-{uuid.uuid4().hex[:8]}")
        client.max_inflight_messages_set(self.window)
        if self.auth:
            client.username_pw_set(*self.auth)
        client.on_connect = lambda *a: connected.set() if not a[3].is_failure else None
        client.on_disconnect = lambda *a: self.lost.set()
        try:
            client.connect("127.0.0.1", self.cluster.mqtt_port(node), keepalive=5)
        except OSError:
            return False
        client.loop_start()
        if connected.wait(5):
            self.client = client
            return True
        client.loop_stop()
        return False

    def run(self, fixes: list[tuple[str, bytes]]) -> None:
        self._connect()
        start, began = 0, time.monotonic()
        while start < len(fixes) and not self.halt.is_set():
            if self.rate:  # the pace of the load, not a wait for anything
                time.sleep(max(0.0, began + start / self.rate - time.monotonic()))
            todo = [i for i in range(start, min(start + self.window, len(fixes)))
                    if i not in self.acked]
            assert self.client is not None
            infos = [(i, self.client.publish(fixes[i][0], fixes[i][1], qos=1)) for i in todo]
            deadline = time.monotonic() + WAIT_S
            while not all(acked(info) for _, info in infos):
                if self.lost.is_set() or time.monotonic() > deadline:
                    break
                self.lost.wait(0.005)
            self.acked.update(i for i, info in infos if acked(info))
            if all(acked(info) for _, info in infos):
                start += self.window
                continue
            lost_at = time.monotonic()
            self.client.loop_stop()
            self._connect()
            self.failovers.append(time.monotonic() - lost_at)
        self.sent = min(start, len(fixes))
        assert self.client is not None
        self.client.loop_stop()
        self.client.disconnect()


def acked(info: mqtt.MQTTMessageInfo) -> bool:
    """PUBACKed; False (not an exception) when the publish found no connection."""
    return info.rc == mqtt.MQTT_ERR_SUCCESS and info.is_published()


def fixes_for(tags: list[str], rounds: int) -> list[tuple[str, bytes]]:
    """Round-robin fixes, each payload '<tag>:<seq>' so order per tag can be checked."""
    return [(f"tagwatch/v1/tags/{tag}/fix", f"{tag}:{seq}".encode())
            for seq in range(rounds) for tag in tags]


def test_a_fix_published_at_one_node_reaches_its_partition_session_on_another(
        nats_cluster: NatsCluster) -> None:
    tag = "T-1001"
    p = partition_of(tag, PARTITIONS)
    worker = Subscriber(f"tagwatch-p{p}", f"tw/tags/{p}/+")
    other = Subscriber(f"tagwatch-p{(p + 1) % PARTITIONS}", f"tw/tags/{(p + 1) % PARTITIONS}/+")
    worker.connect(nats_cluster.mqtt_port(1), subscribe=True)
    other.connect(nats_cluster.mqtt_port(2), subscribe=True)
    try:
        Publisher(nats_cluster, 0).run([(f"tagwatch/v1/tags/{tag}/fix", b'{"seq": 1}')])
        assert worker.wait_for(lambda got: len(got) >= 1)
        assert worker.received == [(f"tw/tags/{p}/{tag}", b'{"seq": 1}')]
        Publisher(nats_cluster, 2).run([(f"tagwatch/v1/tags/{tag}/fix", b'{"seq": 2}')])
        assert worker.wait_for(lambda got: len(got) >= 2)
        assert other.received == []
    finally:
        worker.drop()
        other.drop()


def test_partition_of_matches_the_server_for_hundreds_of_ids(
        nats_cluster: NatsCluster) -> None:
    ids = [f"T-{i:05d}" for i in range(250)] + [uuid.uuid4().hex for _ in range(40)]
    ids += ["x", "TAG_9", "ab-CD-09", "t" * 64]
    if nats_cluster.version >= (2, 10):  # 2.9 refuses '.' in an MQTT topic
        ids += ["T.1", "a.b.c", "v1.0-x"]
    everything = Subscriber(f"audit-{uuid.uuid4().hex[:6]}", "tw/tags/+/+")
    everything.connect(nats_cluster.mqtt_port(2), subscribe=True)
    try:
        Publisher(nats_cluster, 0, window=100).run(fixes_for(ids, 1))
        assert everything.wait_for(lambda got: len(got) >= len(ids))
        seen = {}
        for topic, payload in everything.received:
            prefix, tags, p, tag = topic.split("/")
            assert (prefix, tags) == ("tw", "tags")
            assert payload.decode().rsplit(":", 1)[0] == tag  # last level = tag id
            seen[tag] = int(p)
        assert seen == {tag: partition_of(tag, PARTITIONS) for tag in ids}
    finally:
        everything.drop()


@dataclass
class KillOutcome:
    """What a kill -9 of one node did to one publisher and one persistent subscriber."""

    version: tuple[int, ...]
    victim: str
    sent: int
    acked: int
    lost: int
    duplicates: int
    behind: int  # fixes delivered after a newer fix of their tag
    publisher_failovers_s: list[float]
    subscriber_moved_s: float | None
    session_present: list[bool]
    complete: bool

    def line(self) -> str:
        moved = "-" if self.subscriber_moved_s is None else f"{self.subscriber_moved_s:.1f} s"
        return (f"[nats {'.'.join(map(str, self.version))}] kill -9 of the {self.victim}'s "
                f"node: {self.acked}/{self.sent} PUBACKed, {self.lost} lost, "
                f"{self.duplicates} duplicates, {self.behind} older-behind-newer, publisher "
                f"failover {[round(s, 1) for s in self.publisher_failovers_s]} s, subscriber "
                f"moved {moved}, session_present {self.session_present}")


def kill_scenario(cluster: NatsCluster, victim: str, fixes: list[tuple[str, bytes]]
                  ) -> KillOutcome:
    """Publish at one node, subscribe (persistent) at another, kill -9 the victim's node a
    third of the way in: "publisher", "subscriber" or "stream-leader" (the leader of
    $MQTT_msgs, the stream holding QoS 1 messages, when it is neither of them)."""
    pub_node, sub_node = 0, 1
    if victim == "stream-leader":
        leader = cluster.stream_leader("$MQTT_msgs")
        assert leader is not None, "no $MQTT_msgs leader known"
        pub_node, sub_node = (leader + 1) % 3, (leader + 2) % 3
    killed = {"publisher": pub_node, "subscriber": sub_node}.get(victim)
    worker = Subscriber(f"tagwatch-{uuid.uuid4().hex[:6]}", "tw/tags/+/+")
    worker.connect(cluster.mqtt_port(sub_node), subscribe=True)
    if victim == "stream-leader":  # the first CONNECT may have moved it: ask again
        killed = cluster.stream_leader("$MQTT_msgs")
        pub_node = next(i for i in range(3) if i not in (killed, sub_node))
        assert killed is not None and killed != sub_node, "leader moved to the subscriber"
    assert killed is not None
    publisher = Publisher(cluster, pub_node)
    sending = threading.Thread(target=publisher.run, args=(fixes,), daemon=True)
    sending.start()
    assert worker.wait_for(lambda got: len(got) >= len(fixes) // 3)
    killed_at = time.monotonic()
    cluster.kill(killed)
    moved_s = None
    if killed == sub_node:
        worker.drop()
        worker.connect(cluster.mqtt_port(next(i for i in range(3) if i not in (killed, pub_node))),
                       subscribe=False)
        moved_s = time.monotonic() - killed_at
    sending.join(WAIT_S * 2)
    assert not sending.is_alive(), "publisher did not finish"
    wanted = {fixes[i][1] for i in publisher.acked}
    complete = worker.wait_for(lambda got: wanted <= {p for _, p in got})
    worker.drop()
    payloads = [p for _, p in worker.received]
    return KillOutcome(
        version=cluster.version, victim=victim, sent=len(fixes), acked=len(publisher.acked),
        lost=len(wanted - set(payloads)),
        duplicates=sum(n - 1 for n in Counter(payloads).values()),
        behind=older_than_seen(payloads), publisher_failovers_s=publisher.failovers,
        subscriber_moved_s=moved_s, session_present=worker.session_present,
        complete=complete)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["subscriber", "publisher"])
def test_no_pubacked_fix_is_lost_when_a_node_is_killed(
        victim: str, nats_cluster: NatsCluster, capsys: pytest.CaptureFixture[str]) -> None:
    tags = [f"T-{i:03d}" for i in range(20)]
    outcome = kill_scenario(nats_cluster, victim, fixes_for(tags, 100))  # 2000 fixes
    with capsys.disabled():
        print("\n" + outcome.line())
    assert outcome.lost == 0, outcome.line()  # duplicates and reordering: DESIGN 7 expects them
    assert outcome.complete
    assert outcome.acked == outcome.sent
    if victim == "subscriber":
        assert outcome.session_present[-1], "the persistent session did not survive the kill"


def older_than_seen(payloads: list[bytes]) -> int:
    """How many fixes arrived after a newer fix of the same tag (redelivery reordering)."""
    newest: dict[str, int] = {}
    behind = 0
    for payload in payloads:
        tag, seq = payload.decode().rsplit(":", 1)
        if int(seq) < newest.get(tag, -1):
            behind += 1
        newest[tag] = max(newest.get(tag, -1), int(seq))
    return behind


SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "nats"
SERVICE = ("tagwatch", "service-secret")


def device_entry(device: str, password: str, kind: str = "tags") -> str:
    """A device's users.conf entry, as deploy/nats/users.conf describes it."""
    if kind == "tags":  # the right is on the mapped subject (deploy/nats/users.conf)
        writes, reads = f"tw.tags.*.{device}", f'"tagwatch.v1.tags.{device}.cmd", "$MQTT.sub.>"'
    else:
        writes, reads = f"tagwatch.v1.victims.{device}.fix", ""
    return (f'  {{ user: {device}, password: "{password}", allowed_connection_types: ["MQTT"],'
            f' permissions: {{ publish: ["{writes}"], subscribe: [{reads}] }} }}\n')


@pytest.fixture
def shipped_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """The cluster with deploy/nats/accounts.conf and users.conf (plus two test tags)."""
    workdir = tmp_path / "nats"
    workdir.mkdir()
    (workdir / "accounts.conf").write_text((SHIPPED / "accounts.conf").read_text())
    users = (SHIPPED / "users.conf").read_text().rstrip()
    assert users.endswith("]"), "users.conf must end with the users list"
    devices = device_entry("T-1001", "t1-secret") + device_entry("T-1002", "t2-secret")
    (workdir / "users.conf").write_text(users[:-1] + devices + "]\n")
    yield from running_cluster(
        workdir, accounts='include "accounts.conf"\n', probe_auth=SERVICE,
        env={"TAGWATCH_NATS_PASSWORD": SERVICE[1], "DASHBOARD_NATS_PASSWORD": "dash-secret"})


def test_the_shipped_accounts_let_each_device_publish_only_its_own_fixes(
        shipped_cluster: NatsCluster) -> None:
    cluster = shipped_cluster
    p1, p2 = partition_of("T-1001", PARTITIONS), partition_of("T-1002", PARTITIONS)
    worker = Subscriber("tagwatch-audit", "tw/tags/+/+", auth=SERVICE)
    worker.connect(cluster.mqtt_port(1), subscribe=True)
    try:
        assert worker.suback == [1]
        tag = Publisher(cluster, 0, window=1, auth=("T-1001", "t1-secret"))
        tag._connect()
        assert tag.client is not None
        # Another tag's topic first, its own after: the server handles one connection's
        # packets in order, so when its own fix arrives the forged one would be there.
        forged = tag.client.publish("tagwatch/v1/tags/T-1002/fix", b"forged", qos=1)
        own = tag.client.publish("tagwatch/v1/tags/T-1001/fix", b"own", qos=1)
        own.wait_for_publish(WAIT_S)
        assert own.is_published()
        assert worker.wait_for(lambda got: len(got) >= 1)
        Publisher(cluster, 2, auth=("T-1002", "t2-secret")).run(
            [("tagwatch/v1/tags/T-1002/fix", b"second")])
        assert worker.wait_for(lambda got: len(got) >= 2)
        # Refused and dropped (the server logs a "Publish Violation"), yet PUBACKed by 2.9.10
        # and 2.15.1 alike: a device cannot tell; only the broker's log shows it.
        assert forged.rc == mqtt.MQTT_ERR_SUCCESS
        tag.client.loop_stop()
        assert sorted(worker.received) == sorted(
            [(f"tw/tags/{p1}/T-1001", b"own"), (f"tw/tags/{p2}/T-1002", b"second")])
    finally:
        worker.drop()


def test_the_shipped_accounts_refuse_devices_reading_partitions_and_wrong_passwords(
        shipped_cluster: NatsCluster) -> None:
    cluster = shipped_cluster
    port = cluster.mqtt_port(0)
    assert not mqtt_connack(port, auth=("T-1001", "wrong"))
    assert not mqtt_connack(port)  # no anonymous access
    assert mqtt_connack(port, auth=("dashboard", "dash-secret"))
    snoop = Subscriber("T-1001", "tw/tags/+/+", auth=("T-1001", "t1-secret"))
    snoop.connect(port, subscribe=True)
    try:
        assert snoop.suback == [0x80]  # SUBACK failure: a tag reads no partition
    finally:
        snoop.drop()

