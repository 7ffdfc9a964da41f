"""Five of paho-mqtt's per-message costs, avoided on the paho version they were measured on.

Decoding. For every MQTT 5 PUBLISH, paho 2 builds a `Properties` object (a few dozen
table entries set up in `__init__`) and clears and unpacks it, even when the property
length is 0, as it is for every tag's fix: measured at full rate, that was a sixth of the
daemon's time under the GIL, more than the rule engine. `install` puts a decoder in front
of paho's own that handles exactly that case (MQTT 5, property length 0) and hands every
other packet (MQTT 3.1.1, properties present, malformed) to paho's decoder unchanged. Its
result is the one paho's would be: the same PublishPacket fields, with an empty
`Properties` of packet type PUBLISH (a copy of one built once; its lookup tables are
shared, and paho never changes them). The hook is paho's module function
`_packet.decode_publish`, which its client looks up at every packet.

Acknowledging. `client.ack` queues one 4-byte PUBACK, wakes paho's thread through its
socket pair and is sent on its own (Nagle is off): per message one packet, one wake-up,
one send. `ack_all` queues the same PUBACK bytes for a whole committed batch as one
write. paho keeps no state for a PUBACK it sends (manual acknowledgement), so this
changes nothing but the number of writes; like any queued packet it is dropped if the
connection is lost first, and the broker then redelivers those messages.

Matching. For every message paho looks for `message_callback_add` filters matching its
topic (a generator walking a trie), though tagwatch registers none: `install_client`
gives the client a matcher that answers at once while it holds no filter, and matches as
paho's does once one is added.

Reading. paho reads each packet with three or more `recv` calls (the type byte, the
length byte by byte, then the rest), and under manual acknowledgement handles one
packet per select(): per message a select, three system calls and a pass through its
loop. `install_client` gives the client a reader that takes what one `recv` of 64 KiB
returns and hands paho the slices it asks for, and a `loop_read` that goes on while
bytes remain buffered (select() cannot see them). paho's own packet parser runs
unchanged on those slices; only where its bytes come from changes.

Delivering. For every PUBLISH paho builds an `MQTTMessage` (with a `MQTTMessageInfo` and
its `threading.Condition`), formats its packet trace and looks up the callback and its
filters under a lock, before the application copies out the five fields it needs: measured at
full rate, a tenth of the daemon's time under the GIL. Given a `deliver` function,
`install_client` handles the packet tagwatch receives by the thousand (QoS 1, MQTT 5,
property length 0, a UTF-8 topic, manual acknowledgement, no topic filter, paho's trace
not at DEBUG) by reading those fields from the packet and calling
`deliver(topic, payload, qos, mid, retain, dup)` under paho's callback lock, with paho's
handling of an exception in it. Whole such packets already in the read buffer are
delivered in one loop, without paho's framing (its remaining length read byte by byte,
each byte a `recv` call and a pass through its state); a packet cut short, or of any
other kind, is left to paho's reading. Any other packet goes to paho's own handler, and
so to `on_message`. Under manual acknowledgement paho keeps nothing of a received QoS 1
message, so there is no state to skip.

tests/test_paho_fast.py checks all of these against paho's own behaviour. On another paho version
`install` does nothing and `ack_all` falls back to `client.ack` per message.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as PAHO_VERSION
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

try:  # a private module: another paho may not have it, and then runs its own code
    from paho.mqtt import _packet
except ImportError:
    _packet = None

SUPPORTED_PAHO = ("2.2.",)
Decoder = Callable[[int, Any, MQTTProtocolVersion], Any]


def _plain_publish(header: int, packet: bytes | bytearray) -> tuple[int, int] | None:
    """Where the topic ends and the payload starts in an MQTT 5 PUBLISH (the packet after
    its fixed header) whose property length is 0; None if it has properties or is short."""
    if len(packet) < 2:
        return None
    topic_end = 2 + ((packet[0] << 8) | packet[1])
    props_at = topic_end + 2 if header & 0x06 else topic_end  # after the packet id (QoS > 0)
    if len(packet) <= props_at or packet[props_at] != 0:
        return None
    return topic_end, props_at + 1


def fast_decoder(stock: Decoder) -> Decoder:
    """A decode_publish that answers property-less MQTT 5 packets itself."""
    template = Properties(PacketTypes.PUBLISH)
    v5 = MQTTProtocolVersion.MQTTv5
    publish_packet = _packet.PublishPacket

    def decode_publish(header: int, packet: Any, protocol: MQTTProtocolVersion) -> Any:
        layout = _plain_publish(header, packet) if protocol == v5 else None
        if layout is None:
            return stock(header, packet, protocol)  # properties, 3.1.1 or a short packet
        topic_end, payload_at = layout
        properties = object.__new__(Properties)
        properties.__dict__.update(template.__dict__)
        return publish_packet(
            dup=(header & 0x08) != 0,
            qos=(header & 0x06) >> 1,
            retain=(header & 0x01) != 0,
            topic=bytes(packet[2:topic_end]),
            mid=int.from_bytes(packet[topic_end : payload_at - 1], "big"),  # 0 for QoS 0
            properties=properties,
            payload=bytes(packet[payload_at:]),
        )

    decode_publish.stock = stock  # type: ignore[attr-defined]
    return decode_publish


def supported() -> bool:
    return _packet is not None and PAHO_VERSION.startswith(SUPPORTED_PAHO)


def install() -> bool:
    """Put the fast decoder in front of paho's (once); False on another paho version."""
    if not supported():
        return False
    if not hasattr(_packet.decode_publish, "stock"):
        _packet.decode_publish = fast_decoder(_packet.decode_publish)
    return True


_PUBACK = struct.Struct("!BBH")  # PUBACK, remaining length 2, packet id (reason 0: omitted)


def ack_all(client: paho.Client, mids: list[int]) -> None:
    """PUBACK each QoS 1 message id, in order, in one write (manual acknowledgement)."""
    if not mids:
        return
    if not supported():
        for mid in mids:
            client.ack(mid, 1)
        return
    puback = paho.PUBACK
    blob = b"".join([_PUBACK.pack(puback, 2, mid) for mid in mids])
    client._packet_queue(puback, blob, 0, 0)


class _Filters(MQTTMatcher):
    """paho's matcher, answering "no filter" without walking the topic when it has none."""

    def iter_match(self, topic: str) -> Any:
        if not self._root._children:
            return iter(())
        return super().iter_match(topic)


class _BufferedReader:
    """paho's reads, served from one large recv (see the module docstring, Reading).

    paho reads a packet with three or more `recv` calls (1 byte of type, the length byte
    by byte, then the rest) and, under manual acknowledgement, one packet per select().
    This keeps the bytes of one `recv(CHUNK)` and hands paho the slices it asks for;
    `loop_read` goes on while bytes are buffered, since select() cannot see them.
    The buffer belongs to one socket: bytes of a lost connection are never parsed as
    the start of the next one. With `direct`, the whole QoS 1 PUBLISH packets in the
    buffer are delivered by it between paho's reads (module docstring, Delivering).
    """

    CHUNK = 1 << 16

    def __init__(self, client: paho.Client, direct: _DirectPublish | None = None) -> None:
        self.client = client
        self.stock_recv = client._sock_recv  # its error handling (TLS, lost socket) stays
        self.direct = direct
        self.sock: Any = None
        self.buf = b""
        self.pos = 0

    def buffered(self) -> bool:
        return self.pos < len(self.buf) and self.sock is self.client._sock

    def recv(self, bufsize: int) -> bytes:
        if self.sock is not self.client._sock or self.pos >= len(self.buf):
            self.sock, self.buf, self.pos = self.client._sock, b"", 0
            data = self.stock_recv(self.CHUNK)  # raises BlockingIOError when none is there
            if len(data) <= bufsize:
                return data
            self.buf = data
        start = self.pos
        self.pos = start + bufsize
        return self.buf[start : self.pos]

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        client = self.client
        if client._sock is None:
            return paho.MQTTErrorCode.MQTT_ERR_NO_CONN
        while True:
            if self.direct is not None and client._in_packet["command"] == 0 and self.buffered():
                self.direct.take_whole(self)
            rc = client._packet_read()
            if rc > 0:
                return client._loop_rc_handle(rc)
            if not self.buffered():
                return paho.MQTTErrorCode.MQTT_ERR_SUCCESS


# deliver(topic, payload, qos, mid, retain, dup)
Deliver = Callable[[str, bytes, int, int, bool, bool], None]


class _DirectPublish:
    """paho's PUBLISH handling, skipped for the one packet tagwatch receives (see the module
    docstring, Delivering): a QoS 1, property-less MQTT 5 PUBLISH with a UTF-8 topic, taken
    under manual acknowledgement with no topic filters and paho's trace off. Every other
    packet goes to paho's own handler."""

    def __init__(self, client: paho.Client, deliver: Deliver) -> None:
        self.client = client
        self.stock = client._handle_publish
        self.deliver = deliver

    def __call__(self) -> paho.MQTTErrorCode:
        """paho's `_handle_publish`, for a packet paho has read."""
        header, packet = self.client._in_packet["command"], self.client._in_packet["packet"]
        fields = self.fields(header, packet) if self.applies() else None
        if fields is None:
            return self.stock()
        self.call(fields)
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def applies(self) -> bool:
        """Whether this client's state lets a QoS 1 PUBLISH bypass paho's handler."""
        client = self.client
        return (
            client._protocol == paho.MQTTv5
            and client._manual_ack
            and not client._on_message_filtered._root._children
            and not (client._logger is not None and client._logger.isEnabledFor(logging.DEBUG))
        )

    @staticmethod
    def fields(header: int, packet: bytes | bytearray) -> tuple | None:
        """deliver's arguments for a QoS 1 property-less PUBLISH with a UTF-8 topic (the
        packet after its fixed header); None for any other packet."""
        if header & 0xF6 != 0x32:  # PUBLISH at QoS 1 (dup, retain: any)
            return None
        layout = _plain_publish(header, packet)
        if layout is None:
            return None  # properties, or a short packet: paho decides
        topic_end, payload_at = layout
        try:
            topic = packet[2:topic_end].decode("utf-8")
        except UnicodeDecodeError:
            return None
        mid = (packet[topic_end] << 8) | packet[topic_end + 1]
        retain, dup = bool(header & 0x01), bool(header & 0x08)
        return topic, bytes(packet[payload_at:]), 1, mid, retain, dup

    def call(self, fields: tuple) -> None:
        """deliver, as paho calls on_message: under its callback lock, an exception logged
        and, unless the client suppresses exceptions, raised."""
        client = self.client
        with client._in_callback_mutex:
            try:
                self.deliver(*fields)
            except Exception as err:
                client._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not client.suppress_exceptions:
                    raise

    def take_whole(self, reader: _BufferedReader) -> None:
        """Deliver the whole QoS 1 PUBLISH packets at the head of the reader's buffer, in
        order, up to the first packet that is cut short or of another kind (paho reads
        that one). Called only between packets (paho holds no part of one)."""
        if not self.applies():
            return
        buf, pos, end = reader.buf, reader.pos, len(reader.buf)
        start = pos
        while pos < end and buf[pos] & 0xF6 == 0x32:
            length, shift, at = 0, 0, pos + 1
            while at < end and at <= pos + 4:  # the remaining length: 1 to 4 bytes
                byte = buf[at]
                at += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            else:
                break  # cut short, or longer than MQTT allows: paho's reading decides
            if at + length > end:
                break
            fields = self.fields(buf[pos], buf[at : at + length])
            if fields is None:
                break
            reader.pos = pos = at + length  # before delivering: a raise must not repeat it
            self.call(fields)
        if pos != start:
            client = self.client
            with client._msgtime_mutex:  # as paho after every packet (keepalive)
                client._last_bytes_received = paho.time_func()


def install_client(client: paho.Client, deliver: Deliver | None = None) -> None:
    """The per-client parts: the matcher, the buffered reader and, given `deliver`, the
    direct PUBLISH path (module docstring)."""
    if not supported():
        return
    if deliver is not None and not isinstance(client._handle_publish, _DirectPublish):
        client._handle_publish = _DirectPublish(client, deliver)  # type: ignore[method-assign]
    direct = client._handle_publish
    if type(client._on_message_filtered) is MQTTMatcher:
        client._on_message_filtered = _Filters()
    if not isinstance(getattr(client._sock_recv, "__self__", None), _BufferedReader):
        reader = _BufferedReader(client, direct if isinstance(direct, _DirectPublish) else None)
        client._sock_recv = reader.recv  # type: ignore[method-assign]
        client.loop_read = reader.loop_read  # type: ignore[method-assign]
