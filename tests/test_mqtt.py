"""The MQTT edge against real brokers: ordering, ack after commit, sessions, restarts, status.

Crashes are real: the receiver runs in a subprocess (``python -m tests.test_mqtt``) that is
SIGKILLed, so its TCP connection ends without a DISCONNECT, as after kill -9.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from tagwatch.ingest.embedded_broker import EmbeddedBroker
from tagwatch.ingest.mqtt import BrokerSettings, Message, MqttConnection
from tests.brokers import BrokerUnderTest, Mosquitto, unique_client_id, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
STEP_S = 10.0  # the longest any single expected event may take


def run(coro_fn: Callable[[], Awaitable[None]], timeout_s: float = 30.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout_s):
            await coro_fn()

    asyncio.run(bounded())


@asynccontextmanager
async def connection(url: str, client_id: str, subs: list[str] | None = None,
                     **kwargs: Any) -> AsyncIterator[MqttConnection]:
    protocol = kwargs.pop("protocol", "auto")
    settings = BrokerSettings.from_url(url, client_id=client_id, protocol=protocol)
    async with MqttConnection(settings, [(s, 1) for s in subs or []],
                              connect_timeout_s=STEP_S, **kwargs) as conn:
        yield conn


async def next_message(conn: MqttConnection, it: AsyncIterator[Message]) -> Message:
    async with asyncio.timeout(STEP_S):
        return await anext(it)


async def next_on(conn: MqttConnection, it: AsyncIterator[Message], topic: str) -> Message:
    """The next message on ``topic``, passing over others.

    Only needed for amqtt 0.12, which sends a connecting client the retained messages of
    every topic any client subscribes to; Mosquitto never sends a foreign topic.
    """
    while (m := await next_message(conn, it)).topic != topic:
        pass
    return m


async def publish_all(pub: MqttConnection, topic: str, payloads: list[str]) -> None:
    for p in payloads:
        await pub.publish(topic, p.encode())


# ---- a receiver in its own process, to be killed --------------------------------------


class Receiver:
    """``python -m tests.test_mqtt``: prints READY, then one JSON line per message.

    It acknowledges a message only when its payload starts with "ack:", like a daemon that
    commits some messages and is killed before committing the others.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, client_id: str, topic: str, protocol: str = "auto",
                    status: str = "") -> Receiver:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.test_mqtt", url, client_id, topic, protocol, status,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        receiver = cls(proc)
        assert await receiver.line() == {"ready": True}
        return receiver

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(STEP_S):
            raw = await self.proc.stdout.readline()
        if not raw:
            raise AssertionError(f"receiver exited early with code {await self.proc.wait()}")
        return json.loads(raw)

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def _receiver_main(url: str, client_id: str, topic: str, protocol: str, status: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: data
    extra: dict[str, Any] = {}
    if status:
        extra = {"will": (status, b"offline"), "online": (status, b"online")}
    async with connection(url, client_id, [topic], protocol=protocol, **extra) as conn:
        print(json.dumps({"ready": True}), flush=True)
        async for m in conn.messages():
            text = m.payload.decode()
            if text.startswith("ack:"):
                await conn.ack(m)
                # `ack` only queues the PUBACK. Before saying so (the test may kill this
                # process at once), a barrier: the broker handles one connection's packets
                # in order, so once this publish is acknowledged, so is the message. Killed
                # with the PUBACK still queued, the broker rightly sends the message again.
                await conn.publish(f"barrier/{client_id}", b"")
            print(json.dumps({"payload": text, "dup": m.dup}), flush=True)


# ---- tests on whichever broker the run uses -------------------------------------------


def test_messages_arrive_in_order_and_acked_ones_are_not_redelivered(broker_url: str) -> None:
    prefix, sub_id = unique_prefix(), unique_client_id("sub")
    topic = f"{prefix}/tags/t1/fix"
    sent = [f"fix-{i}" for i in range(30)]

    async def scenario() -> None:
        async with connection(broker_url, unique_client_id("pub")) as pub:
            async with connection(broker_url, sub_id, [f"{prefix}/tags/+/fix"]) as sub:
                it = aiter(sub.messages())
                await publish_all(pub, topic, sent)
                got = []
                for _ in sent:
                    m = await next_message(sub, it)
                    assert m.topic == topic and m.qos == 1
                    got.append(m.payload.decode())
                    await sub.ack(m)  # "committed"
                assert got == sent
                # A barrier: the broker handles one connection's packets in order, so once
                # this PUBACK is back, so are all the acks before it. (Without it, the next
                # connection could take the session over before the broker read them; the
                # messages would then come again, which at-least-once allows.)
                await sub.publish(f"{prefix}/barrier", b"")
            # Same session again: the acknowledged messages must not come back, so the
            # first thing to arrive is a marker published now.
            async with connection(broker_url, sub_id, [f"{prefix}/tags/+/fix"]) as sub:
                it = aiter(sub.messages())
                await pub.publish(topic, b"marker")
                assert (await next_message(sub, it)).payload == b"marker"

    run(scenario)


def test_ack_many_acknowledges_exactly_the_batch_it_is_given(broker_url: str) -> None:
    """The daemon's way: one call for a committed batch. Those messages never come back;
    the ones received but not acknowledged are redelivered to the same session."""
    prefix, sub_id = unique_prefix(), unique_client_id("sub")
    topic = f"{prefix}/tags/t1/fix"
    sent = [f"fix-{i}" for i in range(40)]

    async def scenario() -> None:
        async with connection(broker_url, unique_client_id("pub")) as pub:
            async with connection(broker_url, sub_id, [f"{prefix}/tags/+/fix"]) as sub:
                it = aiter(sub.messages())
                await publish_all(pub, topic, sent)
                got = [await next_message(sub, it) for _ in sent]
                assert [m.payload.decode() for m in got] == sent
                await sub.ack_many(got[:25])  # "committed"; the last 15 are not
                await sub.publish(f"{prefix}/barrier", b"")  # the acks are in (see above)
            async with connection(broker_url, sub_id, [f"{prefix}/tags/+/fix"]) as sub:
                it = aiter(sub.messages())
                again = [await next_message(sub, it) for _ in sent[25:]]
                assert [m.payload.decode() for m in again] == sent[25:]
                await sub.ack_many(again)
                await pub.publish(topic, b"marker")
                assert (await next_message(sub, it)).payload == b"marker"

    run(scenario)


def test_messages_published_while_subscriber_is_away_are_delivered(broker_url: str) -> None:
    """A new MqttConnection (as in a new process) resumes the session: clean start off."""
    prefix, sub_id = unique_prefix(), unique_client_id("sub")
    topic = f"{prefix}/tags/t1/fix"

    async def scenario() -> None:
        async with connection(broker_url, sub_id, [f"{prefix}/#"]):
            pass  # creates the session and its subscription
        async with connection(broker_url, unique_client_id("pub")) as pub:
            await publish_all(pub, topic, ["a", "b", "c"])
        async with connection(broker_url, sub_id, [f"{prefix}/#"]) as sub:
            it = aiter(sub.messages())
            got = [(await next_message(sub, it)).payload for _ in range(3)]
            assert got == [b"a", b"b", b"c"]
            assert sub.session_lost == 0

    run(scenario)


def test_publish_waits_for_puback_and_close_publishes_offline(broker_url: str) -> None:
    prefix = unique_prefix()
    status = f"{prefix}/status"

    async def scenario() -> None:
        async with connection(broker_url, unique_client_id("obs"), [status]) as obs:
            it = aiter(obs.messages())
            async with connection(broker_url, unique_client_id("tw"),
                                  will=(status, b"offline"), online=(status, b"online")):
                assert (await next_on(obs, it, status)).payload == b"online"
            # A clean close sends DISCONNECT (the broker drops the will), so the
            # connection itself must have said "offline".
            assert (await next_on(obs, it, status)).payload == b"offline"

    run(scenario)


# ---- crash and restart tests: Mosquitto ------------------------------------------------


@pytest.fixture
def mosquitto_broker(mqtt_test_broker: BrokerUnderTest) -> BrokerUnderTest:
    if mqtt_test_broker.kind == "embedded":
        pytest.skip("needs Mosquitto: amqtt does not redeliver unacknowledged messages")
    return mqtt_test_broker


@pytest.mark.parametrize("protocol", ["auto", "3.1.1"])
def test_unacknowledged_message_is_redelivered_after_kill(
        mosquitto_broker: BrokerUnderTest, protocol: str) -> None:
    """The heart of ack after commit: kill -9 before the ack, and the broker sends it again."""
    url, prefix, sub_id = mosquitto_broker.url, unique_prefix(), unique_client_id("sub")
    topic = f"{prefix}/tags/t1/fix"

    async def scenario() -> None:
        receiver = await Receiver.start(url, sub_id, f"{prefix}/#", protocol)
        try:
            async with connection(url, unique_client_id("pub")) as pub:
                await publish_all(pub, topic, ["ack:1", "hold:2"])
                assert await receiver.line() == {"payload": "ack:1", "dup": False}
                assert await receiver.line() == {"payload": "hold:2", "dup": False}
        finally:
            await receiver.kill()  # "hold:2" was received but never acknowledged
        async with connection(url, sub_id, [f"{prefix}/#"], protocol=protocol) as sub:
            assert sub.protocol == ("3.1.1" if protocol == "3.1.1" else "5")
            it = aiter(sub.messages())
            again = await next_message(sub, it)
            assert again.payload == b"hold:2"  # and not "ack:1": that one was acknowledged
            assert again.dup
            await sub.ack(again)

    run(scenario)


def test_will_is_published_retained_when_the_client_dies(broker_url: str) -> None:
    url, prefix = broker_url, unique_prefix()
    status = f"{prefix}/status"

    async def scenario() -> None:
        async with connection(url, unique_client_id("obs"), [status]) as obs:
            it = aiter(obs.messages())
            receiver = await Receiver.start(url, unique_client_id("tw"), f"{prefix}/tags/#",
                                            status=status)
            assert (await next_on(obs, it, status)).payload == b"online"
            await receiver.kill()
            assert (await next_on(obs, it, status)).payload == b"offline"
        # Retained: a newcomer learns the state at once.
        async with connection(url, unique_client_id("late"), [status]) as late:
            m = await next_on(late, aiter(late.messages()), status)
            assert (m.payload, m.retain) == (b"offline", True)

    run(scenario)


def test_online_is_published_only_after_suback(broker_url: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """On the wire (paho's packet trace): SUBACK received, then the "online" PUBLISH sent."""
    prefix = unique_prefix()
    status = f"{prefix}/status"

    async def scenario() -> None:
        async with connection(broker_url, unique_client_id("tw"), [f"{prefix}/tags/#"],
                              online=(status, b"online")) as conn:
            assert conn.ready.is_set()

    with caplog.at_level(logging.DEBUG, logger="paho.mqtt"):
        run(scenario)
    trace = [r.getMessage() for r in caplog.records if r.name == "paho.mqtt"]
    suback = next(i for i, t in enumerate(trace) if t.startswith("Received SUBACK"))
    online = next(i for i, t in enumerate(trace) if t.startswith("Sending PUBLISH") and status in t)
    assert suback < online


def test_broker_restart_mid_stream_loses_nothing(mosquitto_factory: Callable[..., Mosquitto]
                                                 ) -> None:
    mosq = mosquitto_factory()
    prefix = unique_prefix()
    topic = f"{prefix}/tags/t1/fix"
    before, during, after = ["b1", "b2", "b3"], ["d1", "d2"], ["a1", "a2", "a3"]

    async def scenario() -> None:
        async with connection(mosq.url, unique_client_id("pub")) as pub, \
                connection(mosq.url, unique_client_id("sub"), [f"{prefix}/#"]) as sub:
            it = aiter(sub.messages())
            await publish_all(pub, topic, before)
            for _ in before:
                await sub.ack(await next_message(sub, it))
            await sub.publish(f"{prefix}/barrier", b"")  # the acks are in (see the first test)
            await asyncio.to_thread(mosq.stop)
            await sub.wait_until(lambda c: not c.connected.is_set(), STEP_S)
            # Published while the broker is down: paho holds them, publish() waits for PUBACK.
            pending = asyncio.ensure_future(publish_all(pub, topic, during))
            await asyncio.to_thread(mosq.start)
            await sub.wait_until(lambda c: c.ready.is_set(), STEP_S)
            await pending
            await publish_all(pub, topic, after)
            got: list[str] = []
            while not set(during + after) <= set(got):
                m = await next_message(sub, it)
                got.append(m.payload.decode())
                await sub.ack(m)
            # At least once: a repeat is allowed, a loss is not; none of "before" was
            # unacknowledged, so none may come back.
            assert not set(got) & set(before)
            assert [p for p in got if p in after] == after
            assert sub.reconnects >= 1 and sub.session_lost == 0

    run(scenario, timeout_s=40)


def test_password_auth(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    mosq = mosquitto_factory(users={"tagwatch": "s3cret"})
    prefix = unique_prefix()

    def settings(password: str) -> BrokerSettings:
        return BrokerSettings.from_url(mosq.url, client_id=unique_client_id(),
                                       username="tagwatch", password=password)

    async def scenario() -> None:
        async with MqttConnection(settings("s3cret"), [(f"{prefix}/#", 1)],
                                  connect_timeout_s=STEP_S) as conn:
            assert conn.protocol == "5"  # the credential-less probe still learned MQTT 5
            it = aiter(conn.messages())
            await conn.publish(f"{prefix}/x", b"hello")
            assert (await next_message(conn, it)).payload == b"hello"
        with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:\d+.*Not authori[sz]ed"):
            async with MqttConnection(settings("wrong"), [], connect_timeout_s=2.0):
                pass

    run(scenario)


# ---- the embedded broker ---------------------------------------------------------------


def test_embedded_broker_round_trip_and_offline_queue() -> None:
    prefix, sub_id = unique_prefix(), unique_client_id("sub")
    topic = f"{prefix}/tags/t1/fix"

    async def scenario() -> None:
        async with EmbeddedBroker() as broker, \
                connection(broker.url, unique_client_id("pub")) as pub:
            assert pub.protocol == "3.1.1"  # auto fell back: amqtt speaks only 3.1.1
            async with connection(broker.url, sub_id, [f"{prefix}/#"]) as sub:
                it = aiter(sub.messages())
                await pub.publish(topic, b"one")
                m = await next_message(sub, it)
                assert m.payload == b"one"
                await sub.ack(m)
            await publish_all(pub, topic, ["two", "three"])  # subscriber away
            async with connection(broker.url, sub_id, [f"{prefix}/#"]) as sub:
                it = aiter(sub.messages())
                got = [(await next_message(sub, it)).payload for _ in range(2)]
                assert got == [b"two", b"three"]

    run(scenario)


if __name__ == "__main__":
    asyncio.run(_receiver_main(*sys.argv[1:6]))


class _Door:
    """Drops every message on `drop_topic` but the first, which comes through limited."""

    def __init__(self, drop_topic: str) -> None:
        self.drop_topic, self.seen, self.counted = drop_topic, 0, 0

    def verdict(self, topic: str, received: float) -> int:
        from tagwatch.ingest.mqtt import DROP, ENTER, LIMITED

        if topic != self.drop_topic:
            return ENTER
        self.seen += 1
        return LIMITED if self.seen == 1 else DROP

    def dropped(self, count: int) -> None:
        self.counted += count  # paho's thread


def test_a_doors_drops_are_acknowledged_counted_and_never_delivered(broker_url: str) -> None:
    """The rate limit's door (issue 16.8): on paho's thread, before a Message is made, a
    dropped message is acknowledged (it never comes back to the session) and counted;
    the other topic's messages and the one marked limited come through in order."""
    prefix, sub_id = unique_prefix(), unique_client_id("sub")
    flood, other = f"{prefix}/tags/t1/fix", f"{prefix}/tags/t2/fix"
    sent = [(other if i % 50 == 0 else flood, f"m-{i}") for i in range(500)]

    async def scenario() -> None:
        door = _Door(flood)
        async with connection(broker_url, unique_client_id("pub")) as pub:
            async with connection(broker_url, sub_id, [f"{prefix}/tags/+/fix"],
                                  door=door) as sub:
                it = aiter(sub.messages())
                for topic, payload in sent:
                    await pub.publish(topic, payload.encode())
                wanted = [(t, p) for t, p in sent if t == other]
                wanted.insert(1, sent[1])  # the flood's first: limited, to be recorded
                got = [await next_message(sub, it) for _ in wanted]
                assert [(m.topic, m.payload.decode()) for m in got] == wanted
                assert [m.limited for m in got] == [m.topic == flood for m in got]
                await sub.ack_many(got)
                await sub.publish(f"{prefix}/barrier", b"")  # every ack is in (see above)
                assert door.counted == len(sent) - len(wanted) == 489
            async with connection(broker_url, sub_id, [f"{prefix}/tags/+/fix"]) as sub:
                it = aiter(sub.messages())
                await pub.publish(other, b"marker")  # nothing dropped comes back first
                assert (await next_message(sub, it)).payload == b"marker"

    run(scenario)
