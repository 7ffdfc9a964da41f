"""The fast PUBLISH decoder gives exactly what paho's own gives, packet by packet."""

from __future__ import annotations

import logging
import select
import socket

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tagwatch.ingest import paho_fast

pytestmark = pytest.mark.skipif(
    not paho_fast.supported(), reason="paho_fast is off on this paho version (paho's own code runs)"
)
_packet = paho_fast._packet
V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311
if _packet is not None:
    STOCK = getattr(_packet.decode_publish, "stock", _packet.decode_publish)
    FAST = paho_fast.fast_decoder(STOCK)
TOPIC = b"tagwatch/v1/tags/T-000123/fix"
PAYLOAD = b'{"ts":1764340000.5,"lat":51.5,"lon":-0.12,"acc":8,"seq":7}'


def _props(**values: object) -> bytes:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props.pack()


def _publish(qos: int, topic: bytes = TOPIC, props: bytes = b"\x00", mid: int = 0x1234) -> bytes:
    packet_id = mid.to_bytes(2, "big") if qos else b""
    return len(topic).to_bytes(2, "big") + topic + packet_id + props + PAYLOAD


CASES = [
    (0x32, _publish(1), V5),  # QoS 1, no properties: the daemon's every message
    (0x3A, _publish(1), V5),  # dup
    (0x33, _publish(1, mid=1), V5),  # retain
    (0x30, _publish(0), V5),  # QoS 0
    (0x32, _publish(1, mid=65535), V5),
    (0x32, _publish(1, topic=b""), V5),
    (0x32, _publish(1, topic="tags/é/fix".encode()), V5),
    (0x32, _publish(1, props=_props(MessageExpiryInterval=30)), V5),
    (0x32, _publish(1, props=_props(TopicAlias=3)), V5),
    (0x32, _publish(1, props=_props(UserProperty=[("a", "1")])), V5),
    (0x32, _publish(1, props=b""), V311),
    (0x30, _publish(0, props=b""), V311),
    (0x32, len(TOPIC).to_bytes(2, "big") + TOPIC + b"\x12\x34\x00", V5),  # empty payload
    (0x32, bytearray(_publish(1)), V5),  # paho reads packets into a bytearray
    (0x32, bytearray(_publish(1, props=_props(MessageExpiryInterval=30))), V5),
]


def _fields(decoded) -> tuple:
    props = decoded.properties
    return (
        decoded.dup,
        decoded.qos,
        decoded.retain,
        type(decoded.topic),
        decoded.topic,
        decoded.mid,
        type(decoded.payload),
        decoded.payload,
        None if props is None else (props.packetType, props.json(), str(props)),
    )


@pytest.mark.parametrize(("header", "packet", "protocol"), CASES)
def test_fast_decoder_equals_paho(header: int, packet: bytes, protocol) -> None:
    assert _fields(FAST(header, packet, protocol)) == _fields(STOCK(header, packet, protocol))


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x00", b"\x00\x40tag", _publish(1)[: len(TOPIC) + 3]],
)
def test_malformed_packets_are_paho_errors(packet: bytes) -> None:
    with pytest.raises(Exception) as stock:
        STOCK(0x32, packet, V5)
    with pytest.raises(type(stock.value)):
        FAST(0x32, packet, V5)


def test_each_message_gets_its_own_properties_object() -> None:
    first, second = FAST(0x32, _publish(1), V5), FAST(0x32, _publish(1), V5)
    first.properties.MessageExpiryInterval = 5
    assert second.properties.json() == {}


def test_installed_once_on_the_supported_paho() -> None:
    assert paho_fast.install()
    installed = _packet.decode_publish
    assert paho_fast.install()
    assert _packet.decode_publish is installed
    assert installed.stock is STOCK


def _queued(client: paho.Client) -> bytes:
    return b"".join(bytes(p["packet"]) for p in client._out_packet)


def _client() -> paho.Client:
    return paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)


@pytest.mark.parametrize("mids", [[1], [7, 1, 65535, 300], list(range(1, 2001))])
def test_ack_all_queues_the_bytes_paho_acks_would(mids: list[int]) -> None:
    one_by_one, batched = _client(), _client()
    for mid in mids:
        one_by_one.ack(mid, 1)
    paho_fast.ack_all(batched, mids)
    assert len(batched._out_packet) == 1
    assert _queued(batched) == _queued(one_by_one)


def test_ack_all_of_nothing_queues_nothing() -> None:
    client = _client()
    paho_fast.ack_all(client, [])
    assert not client._out_packet


TOPICS = ["tagwatch/v1/tags/T-1/fix", "tagwatch/v1/status", "$SYS/broker/load", "a"]
FILTERS = [("tagwatch/v1/tags/+/fix", "tag"), ("#", "all"), ("tagwatch/v1/status", "status")]


def test_client_matcher_matches_like_paho_with_and_without_filters() -> None:
    client = _client()
    paho_fast.install_client(client)
    fast, stock = client._on_message_filtered, MQTTMatcher()
    assert type(fast) is not MQTTMatcher
    for topic in TOPICS:
        assert list(fast.iter_match(topic)) == list(stock.iter_match(topic)) == []
    for sub, value in FILTERS:
        fast[sub] = stock[sub] = value
    for topic in TOPICS:
        assert list(fast.iter_match(topic)) == list(stock.iter_match(topic))
    assert list(fast.iter_match(TOPICS[0])) == ["tag", "all"]
    for sub, _value in FILTERS:
        del fast[sub]
    assert list(fast.iter_match(TOPICS[0])) == []


# ---- the buffered reader -------------------------------------------------------------


def _wire(body: bytes) -> bytes:
    """A whole MQTT 5 PUBLISH packet (QoS 1) with this variable header and payload."""
    length, n = b"", len(body)
    while True:  # the remaining length, 7 bits a byte
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            return b"\x32" + length + body


def _wire_publish(i: int, size: int | None = None) -> bytes:
    """Packet id i + 1, no properties, a payload of its own length."""
    payload = b"y" * size if size is not None else PAYLOAD + b"x" * (i % 300)
    return _wire(_publish(1, mid=i + 1)[: -len(PAYLOAD)] + payload)


def _reading_client(fast: bool) -> tuple[paho.Client, list[tuple[str, bytes, int]], object]:
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5, manual_ack=True
    )
    if fast:
        paho_fast.install_client(client)
    got: list[tuple[str, bytes, int]] = []
    client.on_message = lambda _c, _u, m: got.append((m.topic, m.payload, m.mid))
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    return client, got, broker


def _read_all(client: paho.Client) -> None:
    """What paho's loop does when select() says the socket is readable, until it is not."""
    while select.select([client._sock], [], [], 0)[0]:
        assert client.loop_read() == paho.MQTT_ERR_SUCCESS


def _cut_and_read(make_client, stream: bytes, cut: int) -> list[list]:
    """What paho's own client and the fast one (make_client(False), make_client(True))
    receive when the stream arrives in pieces of `cut` bytes."""
    results = []
    for fast in (False, True):
        client, got, broker = make_client(fast)
        for start in range(0, len(stream), cut):
            broker.sendall(stream[start : start + cut])
            _read_all(client)
        results.append(got)
        broker.close()
    return results


@pytest.mark.parametrize("cut", [1, 2, 7, 100, 4096, 70_000])
def test_buffered_reader_reads_what_paho_reads(cut: int) -> None:
    """The same messages in the same order, however the stream is cut into segments
    (mid-header, mid-length, mid-payload), with a 70 kB packet among small ones."""
    stream = b"".join(_wire_publish(i) for i in range(400)) + _wire_publish(400, 70_000)
    results = _cut_and_read(_reading_client, stream, cut)
    assert len(results[0]) == 401
    assert results[1] == results[0]


def test_buffered_reader_drops_the_bytes_of_a_lost_connection() -> None:
    """A half-read packet of the old socket is never taken as the start of the new one."""
    client, got, broker = _reading_client(True)
    two = _wire_publish(1) + _wire_publish(2)
    broker.sendall(two[: len(two) - 5])  # the second packet is cut short
    _read_all(client)
    assert [m for _t, _p, m in got] == [2]
    assert client._sock_recv.__self__.buffered() is False  # all of it went to paho
    # Now with bytes left in the buffer: a large recv, then the socket changes.
    client2, got2, broker2 = _reading_client(True)
    reader = client2._sock_recv.__self__
    broker2.sendall(two)
    assert len(client2._sock_recv(1)) == 1  # one byte handed out, the rest buffered
    assert reader.buffered()
    new, other = socket.socketpair()
    new.setblocking(False)
    client2._sock = new
    client2._in_packet = {**client2._in_packet, "command": 0}  # as paho's reconnect resets it
    assert not reader.buffered()
    other.sendall(_wire_publish(5))
    _read_all(client2)
    assert [m for _t, _p, m in got2] == [6]


# ---- direct PUBLISH delivery ---------------------------------------------------------


def _delivering_client(protocol: int, direct: bool) -> tuple[paho.Client, list[tuple], object]:
    """A reading client, paho's own or with all of paho_fast (`direct`), whose messages
    are recorded as (topic, payload, qos, mid, retain, dup)."""
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol, manual_ack=True
    )
    got: list[tuple] = []

    def deliver(topic: str, payload: bytes, qos: int, mid: int, retain: bool, dup: bool) -> None:
        got.append((topic, payload, qos, mid, retain, dup))

    def on_message(_c, _u, m) -> None:
        try:
            topic = m.topic
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        deliver(topic, bytes(m.payload), m.qos, m.mid, bool(m.retain), bool(m.dup))

    client.on_message = on_message
    if direct:
        paho_fast.install_client(client, deliver=deliver)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    return client, got, broker


DELIVERY_CASES = [
    *((header, bytes(packet), protocol) for header, packet, protocol in CASES),
    (0x34, _publish(2), V5),  # QoS 2: paho's own flow (PUBREC) runs
    (0x32, _publish(1, topic=b"tags/\xff/fix"), V5),  # a topic that is not UTF-8
]


@pytest.mark.parametrize(("header", "packet", "protocol"), DELIVERY_CASES)
def test_direct_publish_delivers_what_paho_delivers(header: int, packet: bytes, protocol) -> None:
    """Every packet (QoS 0, 1 and 2, properties or none, MQTT 5 and 3.1.1, dup, retain,
    empty topic or payload, a topic that is not UTF-8) reaches the application with the
    same fields, and paho answers the same bytes (QoS 2's PUBREC), on either path."""
    results = []
    for direct in (False, True):
        client, got, broker = _delivering_client(protocol.value, direct)
        broker.sendall(bytes([header]) + _wire(packet)[1:])
        _read_all(client)
        client.loop_write()
        broker.setblocking(False)
        try:
            answered = broker.recv(100)
        except BlockingIOError:
            answered = b""
        results.append((got, answered))
        broker.close()
    qos2 = header & 0x06 == 0x04  # delivered on PUBREL, answered with a PUBREC now
    assert len(results[0][0]) == (0 if qos2 else 1)
    assert results[0][1][:1] == (b"\x50" if qos2 else b"")
    assert results[1] == results[0]


def test_direct_publish_takes_the_daemons_messages_itself() -> None:
    """The QoS 1 property-less MQTT 5 PUBLISH never reaches paho's handler; the rest do."""
    client, got, broker = _delivering_client(paho.MQTTv5, direct=True)
    stock = client._handle_publish.stock
    calls = []
    client._handle_publish.stock = lambda: calls.append(1) or stock()
    broker.sendall(_wire(_publish(1)) + _wire(_publish(1, props=_props(TopicAlias=3))))
    _read_all(client)
    assert len(got) == 2 and len(calls) == 1  # only the one with properties


def test_direct_publish_leaves_filters_and_paho_trace_to_paho(caplog) -> None:
    """With a topic filter added, or paho's packet trace on, paho's handler runs."""
    client, got, broker = _delivering_client(paho.MQTTv5, direct=True)
    filtered = []
    client.message_callback_add("tagwatch/#", lambda _c, _u, m: filtered.append(m.mid))
    broker.sendall(_wire(_publish(1, mid=7)))
    _read_all(client)
    assert filtered == [7] and got == []
    client.message_callback_remove("tagwatch/#")
    client.enable_logger(logging.getLogger("test.paho"))
    with caplog.at_level(logging.DEBUG, logger="test.paho"):
        broker.sendall(_wire(_publish(1, mid=8)))
        _read_all(client)
    assert [m[3] for m in got] == [8]
    assert any("Received PUBLISH" in r.getMessage() for r in caplog.records)


def test_direct_publish_handles_a_failing_callback_as_paho_does(caplog) -> None:
    """An exception in the application's handler is logged and, with paho's
    suppress_exceptions, the network thread goes on; without it, it propagates."""
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5, manual_ack=True
    )

    def deliver(*_args) -> None:
        raise ValueError("bug in the handler")

    paho_fast.install_client(client, deliver=deliver)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    client.enable_logger(logging.getLogger("test.paho.errors"))
    client.suppress_exceptions = True
    with caplog.at_level(logging.ERROR, logger="test.paho.errors"):
        broker.sendall(_wire(_publish(1)))
        _read_all(client)
    assert any("bug in the handler" in r.getMessage() for r in caplog.records)
    client.suppress_exceptions = False
    broker.sendall(_wire(_publish(1)))
    with pytest.raises(ValueError, match="bug in the handler"):
        _read_all(client)


def _mixed_stream() -> bytes:
    """The daemon's own packets among every other kind the reader may meet."""
    packets = []
    for i in range(400):
        if i % 50 == 7:
            packets.append(_wire(_publish(1, mid=i + 1, props=_props(MessageExpiryInterval=30))))
        elif i % 50 == 8:
            packets.append(b"\x30" + _wire(_publish(0))[1:])  # QoS 0
        elif i % 50 == 9:
            packets.append(b"\x3b" + _wire_publish(i)[1:])  # QoS 1, dup and retain
        else:
            packets.append(_wire_publish(i))
    return b"".join(packets) + _wire_publish(400, 70_000) + _wire_publish(401)


@pytest.mark.parametrize("cut", [1, 2, 7, 100, 4096, 70_000])
def test_direct_publish_reads_a_stream_as_paho_does(cut: int, monkeypatch) -> None:
    """The same messages in the same order as paho's own reading, however the stream is
    cut (mid-header, mid-length, mid-payload), with other packets and a 70 kB one among
    the daemon's; whole packets in the buffer are taken without paho's reading."""
    stream = _mixed_stream()
    read_by_paho = []
    through_paho = paho_fast._DirectPublish.__call__
    monkeypatch.setattr(
        paho_fast._DirectPublish,
        "__call__",
        lambda self: read_by_paho.append(1) or through_paho(self),
    )
    results = _cut_and_read(lambda fast: _delivering_client(paho.MQTTv5, fast), stream, cut)
    assert len(results[0]) == 402
    assert results[1] == results[0]
    if cut >= 4096:
        assert len(read_by_paho) < 402 // 2


@pytest.mark.parametrize("short", [1, 2, 60])
def test_direct_publish_leaves_a_packet_cut_short_to_paho(short: int) -> None:
    """A packet whose last bytes have not arrived is neither delivered cut short nor
    lost: it is delivered whole once they come."""
    client, got, broker = _delivering_client(paho.MQTTv5, direct=True)
    stream = _wire_publish(1) + _wire_publish(2) + _wire_publish(3)
    broker.sendall(stream[:-short])
    _read_all(client)
    assert [m[3] for m in got] == [2, 3]
    broker.sendall(stream[-short:])
    _read_all(client)
    assert [m[3] for m in got] == [2, 3, 4]
    assert got[2][1] == _wire_publish(3)[-len(got[2][1]) :]
