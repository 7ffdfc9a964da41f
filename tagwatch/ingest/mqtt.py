"""The MQTT edge: an asyncio adapter around paho-mqtt 2 that acknowledges after commit.

Why not aiomqtt: aiomqtt 2 sends PUBACK as soon as a QoS 1 message arrives, so a crash
between receipt and commit loses the message. Here paho runs with ``manual_ack=True`` and
the daemon calls :meth:`MqttConnection.ack` only once the message's effects are durable;
a process killed before that leaves the message unacknowledged in the broker's session,
and the broker sends it again on the next connect (DESIGN 4).

Threads: paho's own network thread (``loop_start``) does all socket work, connects and
reconnects. Its callbacks hand events to the asyncio loop with ``call_soon_threadsafe``,
which keeps their order. ``publish`` and ``ack`` are called from the asyncio thread; paho
queues them under its own locks and wakes its network thread, which is the threading
model paho documents for ``loop_start``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import msgspec
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tagwatch.ingest import paho_fast

log = structlog.get_logger("tagwatch.mqtt")


class _PahoNoise(logging.Filter):
    # paho's network loop logs this at ERROR once after every clean DISCONNECT.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger("paho.mqtt")
_paho_log.addFilter(_PahoNoise())

# CONNACK "unsupported protocol version": 1 in MQTT 3.1.1, 0x84 in MQTT 5 (paho maps 1 to 0x84).
_UNSUPPORTED_PROTOCOL = (1, 0x84)
_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 10.0
_SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: a client connected with our id


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = "tagwatch-1"
    session_expiry_s: int = 86400
    keepalive_s: int = 30
    # auto: try MQTT 5, fall back to 3.1.1 when the broker refuses it (amqtt speaks only 3.1.1)
    protocol: Literal["5", "3.1.1", "auto"] = "auto"
    # MQTT 5 Receive Maximum: how many QoS 1 messages the broker may have unacknowledged
    # with us at once. It bounds the in-memory queue and must exceed an ingest micro-batch.
    receive_maximum: int = 10000  # unacknowledged messages in flight: bounds throughput
    # The broker's max_packet_size: a larger PUBLISH makes the broker drop the connection
    # (and paho resends it after every reconnect), so `publish` refuses it before sending.
    max_packet_bytes: int = 1024 * 1024
    # Every node of a broker cluster, (host, port), tried in turn from host:port on: after
    # a failed attempt or a lost connection the next one (DESIGN 7). Empty: host:port only.
    nodes: tuple[tuple[str, int], ...] = ()

    @property
    def url(self) -> str:
        """Where the broker is, for logs and errors: scheme, host and port, no credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> BrokerSettings:
        """Settings from ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(
                f"broker url {url!r}: expected mqtt://host[:port] or mqtts://host[:port]"
            )
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else kwargs.pop("username", None),
            password=unquote(parts.password) if parts.password else kwargs.pop("password", None),
            **kwargs,
        )


class PacketTooLarge(ValueError):
    """A publication larger than the broker's packet limit; it was not sent."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(
            f"publish to {topic!r}: packet of about {size} bytes is larger than the broker's "
            f"limit of {limit} bytes ([broker] max_packet_kb); not sent"
        )
        self.size, self.limit = size, limit


def packet_size(topic: str, payload: bytes) -> int:
    """An upper bound of the PUBLISH packet's size: fixed header (at most 5 bytes),
    topic (2 + length), packet id (2), MQTT 5 properties (1, we send none), payload."""
    return 5 + 2 + len(topic.encode()) + 2 + 1 + len(payload)


def publish_once(
    settings: BrokerSettings, topic: str, payload: bytes, timeout_s: float = 15.0
) -> None:
    """One QoS 1 publish from a short-lived client (a command line tool), returning once
    the broker has acknowledged it. A clean session under `settings.client_id`, which the
    caller makes its own (never the daemon's: the broker would disconnect the daemon).
    Raises ConnectionError naming the broker (without credentials)."""
    done = threading.Event()
    failure: list[str] = []
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=paho.MQTTv311
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set_context(_tls_context(settings))

    def on_connect(_c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            failure.append(f"CONNACK refused: {rc}")
            done.set()

    client.on_connect = on_connect
    client.on_publish = lambda *_a: done.set()
    try:
        client.connect(settings.host, settings.port, settings.keepalive_s)
    except OSError as exc:
        raise ConnectionError(f"MQTT broker {settings.url}: cannot connect ({exc})") from None
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1)
        if not done.wait(timeout_s):
            failure.append(f"no PUBACK within {timeout_s:g} s")
        if failure:
            raise ConnectionError(f"MQTT broker {settings.url}: publish to {topic}: {failure[0]}")
    finally:
        client.disconnect()
        client.loop_stop()


# A door's verdicts on an arriving message (MqttConnection's `door`).
ENTER, LIMITED, DROP = 0, 1, 2


class Door(Protocol):
    """Decides on paho's thread, from the topic and arrival time alone (before anything
    reads the payload), what becomes of each message: ENTER, LIMITED (delivered with
    `limited` set: the caller records it as a rejection) or DROP (acknowledged at once,
    in bulk, never queued; `dropped(n)` is told how many after each acknowledgement)."""

    def verdict(self, topic: str, received: float) -> int: ...

    def dropped(self, count: int) -> None: ...


class Message(msgspec.Struct, frozen=True, gc=False):
    """One received message. A struct, not a dataclass: one is made per message on paho's
    thread, and a frozen dataclass costs ten times as much to build."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    received: float  # time.time() at arrival
    retain: bool = False
    dup: bool = False
    # Which connection delivered it: a packet id is only meaningful on its own connection.
    connection: int = 0
    limited: bool = False  # the door's LIMITED: over its limit, to be recorded as rejected


class Backoff:
    """Exponential backoff with full jitter in [d/2, d], capped."""

    def __init__(self, base_s: float = _BACKOFF_BASE_S, cap_s: float = _BACKOFF_CAP_S) -> None:
        self.base_s, self.cap_s, self.attempt = base_s, cap_s, 0

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


Payload = bytes | Callable[[], bytes]


async def connect_unless(conn: MqttConnection, stop: asyncio.Event) -> bool:
    """Enter `conn` (connect and subscribe, retrying) unless `stop` is set first: True once
    connected, False if stopped before (the connection attempt cancelled)."""
    connect = asyncio.create_task(conn.__aenter__())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({connect, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not connect.done():
        connect.cancel()
        with contextlib.suppress(BaseException):
            await connect
        return False
    connect.result()
    return True


@dataclass
class _State:
    """What the paho thread reports; read and written on the asyncio thread only."""

    connection: int = 0  # number of successful CONNACKs so far
    protocol: int = paho.MQTTv5
    sub_mid: int | None = None
    last_error: str = "no connection attempt yet"
    pending_pubs: dict[int, asyncio.Future[None]] = field(default_factory=dict)


def _tls_context(s: BrokerSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=s.ca_file)
    if s.cert_file:
        ctx.load_cert_chain(s.cert_file, s.key_file)
    return ctx


def _no_delay(client: paho.Client) -> None:
    """Small packets go out at once (Nagle plus delayed ACKs would add ~40 ms per alert)."""
    sock = client.socket()
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def probe_mqtt5(settings: BrokerSettings, timeout_s: float = 5.0) -> bool:
    """Does the broker speak MQTT 5? Asks with a bare CONNECT under a throwaway client id.

    Done before the real connection because a 3.1.1-only broker may not answer a full
    MQTT 5 CONNECT at all (amqtt 0.12 stalls on one that carries a will), while every
    broker answers this one: 3.1.1 brokers refuse it with return code 1 or close the
    socket. The probe sends no credentials, has clean start on and leaves no session.
    """
    client_id = f"tagwatch-probe-{random.getrandbits(48):012x}".encode()
    body = (
        b"\x00\x04MQTT\x05\x02\x00\x0a\x00"  # MQTT 5, clean start, keepalive 10, no props
        + len(client_id).to_bytes(2, "big")
        + client_id
    )
    ctx = _tls_context(settings) if settings.tls else None
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(settings.host, settings.port, ssl=ctx)
        try:
            writer.write(b"\x10" + bytes([len(body)]) + body)
            await writer.drain()
            try:
                head = await reader.readexactly(4)
            except asyncio.IncompleteReadError as exc:
                head = exc.partial  # closed without a CONNACK: a 3.1.1-only broker
            if len(head) >= 4 and head[0] == 0x20 and head[3] == 0:
                writer.write(b"\xe0\x00")  # DISCONNECT, normal
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    # CONNACK: 0x20, remaining length, flags, reason. 3.1.1 refusal: 1; MQTT 5's: 0x84.
    return len(head) >= 4 and head[0] == 0x20 and head[3] not in _UNSUPPORTED_PROTOCOL


class MqttConnection:
    """One MQTT session: QoS 1 subscriptions, manual acknowledgement, status and will."""

    def __init__(
        self,
        settings: BrokerSettings,
        subscriptions: list[tuple[str, int]],
        will: tuple[str, bytes] | None = None,
        online: tuple[str, Payload] | None = None,
        *,
        connect_timeout_s: float | None = None,
        publish_timeout_s: float = 30.0,
        offline_on_close: bool = True,
        door: Door | None = None,
    ) -> None:
        self.settings = settings
        self.door = door
        # packet ids of the door's DROPs since the last read, acknowledged after it in one
        # write (paho's thread only)
        self._dropped: list[int] = []
        self._bulk_acks = paho_fast.supported()
        self.subscriptions = list(subscriptions)
        self.will = will
        self.online = online
        self.connect_timeout_s = connect_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.offline_on_close = offline_on_close
        self._where = f"{settings.host}:{settings.port}"
        self._node = 0  # index in settings.nodes of the node tried last
        self.connected = asyncio.Event()  # CONNACK accepted
        self.ready = asyncio.Event()  # ... and SUBACK received: messages can flow
        self.reconnects = 0
        self.session_lost = 0  # reconnects without the session, and takeovers of it
        self.session_lost_at: float | None = None  # time.time() of the last
        self._taken_over = False
        self._state = _State()
        # Unbounded on purpose: a bounded queue would have to drop or block paho's thread.
        # It cannot grow without bound, because every QoS 1 message in it is unacknowledged
        # and the broker stops sending once Receive Maximum (MQTT 5) or its max inflight
        # (Mosquitto's max_inflight_messages on 3.1.1) unacknowledged messages are out.
        self._queue: asyncio.Queue[list[Message] | None] = asyncio.Queue()  # bursts
        self._inbox: collections.deque[Message] = collections.deque()  # from paho's thread
        self._inbox_lock = threading.Lock()
        self._drain_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._backoff = Backoff()
        self._closing = False
        # Link generation, changed by paho's thread on every CONNACK and every loss. An ack
        # checks it under the lock, so a PUBACK is never queued onto a later connection,
        # where its packet id could name another, uncommitted message.
        self._link = 0
        self._link_lock = threading.Lock()
        self._changed = asyncio.Event()  # replaced after each state change; see wait_until

    # ---- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> MqttConnection:
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                self._state.protocol = await self._choose_protocol()
                self._start_client()
                await self.ready.wait()
        except TimeoutError:
            await self._stop_client()
            raise ConnectionError(
                f"MQTT broker {self.settings.host}:{self.settings.port}: not connected within "
                f"{self.connect_timeout_s} s ({self._state.last_error})"
            ) from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._closing:
            return
        if self.offline_on_close and self.will and self.connected.is_set():
            # A clean DISCONNECT discards the will, so say "offline" ourselves.
            with contextlib.suppress(Exception):
                await self.publish(self.will[0], self.will[1], qos=1, retain=True, timeout_s=5.0)
        self._closing = True
        await self._stop_client()
        for fut in self._state.pending_pubs.values():
            if not fut.done():
                fut.set_exception(ConnectionError("MQTT connection closed before PUBACK"))
        self._queue.put_nowait(None)

    async def _choose_protocol(self) -> int:
        wanted = self.settings.protocol
        if wanted != "auto":
            return paho.MQTTv311 if wanted == "3.1.1" else paho.MQTTv5
        while True:
            host, port = self._address()
            try:
                node = dataclasses.replace(self.settings, host=host, port=port)
                speaks_v5 = await probe_mqtt5(node)
            except (OSError, TimeoutError) as exc:
                self._note_error(f"protocol probe: {str(exc) or type(exc).__name__}")
                self._use_node(self._node + 1)
                delay = self._backoff.next()  # broker down: back off and retry
                self._unreachable(self._state.last_error, delay)
                await asyncio.sleep(delay)
                continue
            self._backoff.reset()
            if not speaks_v5:
                log.info(
                    "protocol_fallback",
                    broker=self._where,
                    protocol="3.1.1",
                    reason="broker refused MQTT 5",
                )
            return paho.MQTTv5 if speaks_v5 else paho.MQTTv311

    async def _stop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()  # reason 0 (normal): the broker discards the will
        await asyncio.to_thread(client.loop_stop)
        self.connected.clear()
        self.ready.clear()

    def _start_client(self) -> None:
        client = self._make_client(self._state.protocol)
        self._client = client
        s = self.settings
        if self._state.protocol == paho.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s
            props.ReceiveMaximum = s.receive_maximum
            # clean_start=False on every connect, the first included: paho's default
            # (MQTT_CLEAN_START_FIRST_ONLY) would wipe the session of the previous process.
            host, port = self._address()
            client.connect_async(host, port, s.keepalive_s, clean_start=False, properties=props)
        else:
            client.connect_async(*self._address(), s.keepalive_s)
        client.loop_start()

    def _make_client(self, protocol: int) -> paho.Client:
        s = self.settings
        paho_fast.install()  # a sixth of the daemon's time went to empty MQTT 5 properties
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=protocol,
            clean_session=None if protocol == paho.MQTTv5 else False,
            manual_ack=True,
        )
        client.suppress_exceptions = True  # a bug in a callback must not kill the network thread
        client.enable_logger(_paho_log)  # paho's packet trace, at DEBUG
        client.max_queued_messages_set(0)  # 0 = unlimited: never refuse a publish while offline
        client.reconnect_delay_set(self._backoff.next(), _BACKOFF_CAP_S)  # first-connect retry
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set(
                ca_certs=s.ca_file,
                certfile=s.cert_file,
                keyfile=s.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if self.will:
            client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        paho_fast.install_client(client, deliver=self._deliver, after_read=self._ack_dropped)
        return client

    # ---- public API ------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[Message]:
        """Every message, in arrival order; ends when the connection is closed. (An
        iterator dropped halfway through a burst takes that burst's rest with it: those
        messages are unacknowledged, and the broker sends them again on the next
        connection. The daemon reads `bursts()`.)"""
        async for burst in self.bursts():
            for msg in burst:
                yield msg

    async def bursts(self) -> AsyncIterator[list[Message]]:
        """Every message, in arrival order, as lists of those that arrived together (one
        per wake-up of the event loop); ends when the connection is closed."""
        while True:
            burst = await self._queue.get()
            if burst is None:
                self._queue.put_nowait(None)  # let other iterators end too
                return
            yield burst

    @property
    def protocol(self) -> str:
        return "5" if self._state.protocol == paho.MQTTv5 else "3.1.1"

    async def wait_until(
        self, predicate: Callable[[MqttConnection], bool], timeout_s: float = 10.0
    ) -> None:
        """Wait for a state change (connect, disconnect, ready) that makes predicate true."""
        async with asyncio.timeout(timeout_s):
            while not predicate(self):
                await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def ack(self, msg: Message) -> None:
        """Acknowledge ``msg`` (QoS 1 PUBACK) once its effects are committed."""
        await self.ack_many([msg])

    async def ack_many(self, msgs: list[Message]) -> None:
        """Acknowledge a committed batch: as `ack` for each, under one lock."""
        client = self._client
        if client is None:
            return
        with self._link_lock:
            link = self._link
            current = [m for m in msgs if m.qos > 0 and m.connection == link]
            # one write for the batch, not one packet, wake-up and send per message
            paho_fast.ack_all(client, [m.mid for m in current if m.qos == 1])
            for m in current:
                if m.qos != 1:
                    client.ack(m.mid, m.qos)  # QoS 2 (never subscribed to): paho's own way
        skipped = sum(1 for m in msgs if m.qos > 0) - len(current)
        if skipped:
            # The broker redelivers them on the new connection; those copies get acked.
            log.debug("ack_skipped", messages=skipped, reason="earlier connection")

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish; for QoS 1 return once the broker has acknowledged it (PUBACK).

        While offline paho keeps the message and sends it after reconnecting.
        """
        size = packet_size(topic, payload)
        if size > self.settings.max_packet_bytes:
            raise PacketTooLarge(topic, size, self.settings.max_packet_bytes)
        if self._client is None:
            raise ConnectionError(f"publish to {topic!r}: MQTT connection is not open")
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            why = paho.error_string(info.rc)
            raise ConnectionError(f"publish to {topic!r} refused by paho: {why}")
        if qos == 0:
            return
        # on_publish reaches us through call_soon_threadsafe, so it runs after this
        # registration even when the PUBACK has already arrived.
        fut = self._loop.create_future()  # type: ignore[union-attr]
        self._state.pending_pubs[info.mid] = fut
        timeout = self.publish_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"publish to {topic!r}: no PUBACK within {timeout} s") from None
        finally:
            self._state.pending_pubs.pop(info.mid, None)

    # ---- paho thread callbacks: hand over to the asyncio loop --------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: paho.Client, _u: Any, flags: Any, rc: ReasonCode, _p: Any
    ) -> None:
        if rc.is_failure:
            self._set_retry_delay(client)
            self._call(self._connect_refused, rc.value, str(rc))
            return
        self._backoff.reset()
        _no_delay(client)
        with self._link_lock:
            self._link += 1
        self._dropped.clear()  # ids of the last connection: the broker sends them again
        # Resubscribe on every connect: harmless with a kept session, needed without one.
        mid = client.subscribe(self._subscribe_args(client))[1] if self.subscriptions else None
        self._call(self._connect_accepted, bool(flags.session_present), mid)

    def _on_connect_fail(self, client: paho.Client, _u: Any) -> None:
        delay = self._set_retry_delay(client)
        self._call(self._connect_failed, delay)

    def _on_disconnect(
        self, client: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any
    ) -> None:
        with self._link_lock:
            self._link += 1
        self._dropped.clear()
        self._set_retry_delay(client)
        self._call(self._disconnected, str(rc), rc.value)

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any
    ) -> None:
        self._call(self._subscribed, mid, [(rc.value, str(rc)) for rc in rcs])

    def _on_message(self, _c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
        self._deliver(m.topic, bytes(m.payload), m.qos, m.mid, bool(m.retain), bool(m.dup))

    def _deliver(
        self, topic: str, payload: bytes, qos: int, mid: int, retain: bool, dup: bool
    ) -> None:
        """A received message, from paho's on_message or paho_fast's direct PUBLISH path."""
        received = time.time()
        verdict = ENTER if self.door is None else self.door.verdict(topic, received)
        if verdict == DROP:
            # A flood's excess costs this and a share of one PUBACK write: no Message, no
            # queue, no event-loop work (issue 16.8). Acknowledged after the read.
            if qos == 1:
                self._dropped.append(mid)
                if not self._bulk_acks:  # no after-read hook on another paho
                    self._ack_dropped(self._client)
            elif self.door is not None:
                self.door.dropped(1)
            return
        limited = verdict == LIMITED
        msg = Message(topic, payload, qos, mid, received, retain, dup, self._link, limited)
        # One wake-up of the event loop per burst, not per message: at thousands of
        # messages a second the loop's self-pipe writes were a tenth of the CPU.
        self._inbox.append(msg)
        with self._inbox_lock:
            if self._drain_pending:
                return
            self._drain_pending = True
        self._call(self._drain_inbox)

    def _ack_dropped(self, client: paho.Client | None) -> None:
        """PUBACK the door's DROPs of the last read, in one write (paho's thread)."""
        mids = self._dropped
        if not mids or client is None:
            return
        self._dropped = []
        paho_fast.ack_all(client, mids)
        self.door.dropped(len(mids))  # type: ignore[union-attr]

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._call(self._published, mid, rc.value, str(rc))

    def _set_retry_delay(self, client: paho.Client) -> float:
        # paho waits min_delay before its next attempt; setting it per attempt adds jitter.
        self._next_node(client)
        delay = self._backoff.next()
        client.reconnect_delay_set(delay, max(delay, _BACKOFF_CAP_S))
        return delay

    def _address(self) -> tuple[str, int]:
        nodes = self.settings.nodes
        return nodes[self._node] if nodes else (self.settings.host, self.settings.port)

    def _next_node(self, client: paho.Client) -> None:
        """With several nodes, paho's next attempt goes to the next one. Set on paho's
        own fields: its setters refuse while a refused connection's socket is still open,
        and paho reads them only when it connects again."""
        if len(self.settings.nodes) < 2:
            return
        client._host, client._port = self._use_node(self._node + 1)

    def _use_node(self, index: int) -> tuple[str, int]:
        nodes = self.settings.nodes
        if not nodes:
            return self._address()
        self._node = index % len(nodes)
        self._where = "{}:{}".format(*nodes[self._node])
        return nodes[self._node]

    def _subscribe_args(self, client: paho.Client) -> list[tuple[str, Any]]:
        if client.protocol == paho.MQTTv5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            return [(t, SubscribeOptions(qos=q)) for t, q in self.subscriptions]
        return [(t, q) for t, q in self.subscriptions]

    # ---- on the asyncio thread ---------------------------------------------------------

    def _connect_failed(self, delay: float) -> None:
        self._note_error("TCP/TLS connection failed")
        if not self._closing:
            self._unreachable(self._state.last_error, delay)

    def _unreachable(self, error: str, retry_in_s: float) -> None:
        """Every failed attempt and its backoff step, at warning: never silent."""
        log.warning(
            "broker_unreachable",
            broker=self.settings.url,
            error=error,
            retry_in_s=round(retry_in_s, 2),
        )

    def _connect_refused(self, code: int, reason: str) -> None:
        self._note_error(f"CONNACK refused: {reason}")
        log.warning("connect_refused", broker=self._where, reason=reason, code=code)

    def _connect_accepted(self, session_present: bool, sub_mid: int | None) -> None:
        st = self._state
        st.connection += 1
        st.last_error = "none"
        st.sub_mid = sub_mid
        protocol = "5" if st.protocol == paho.MQTTv5 else "3.1.1"
        log.info(
            "connected",
            broker=self._where,
            client_id=self.settings.client_id,
            session_present=session_present,
            protocol=protocol,
            connection=st.connection,
        )
        if st.connection > 1:
            self.reconnects += 1
            if not session_present and not self._taken_over:  # a takeover was counted
                self._lost("session_lost", "session_present false on a reconnect")
        self._taken_over = False
        self.connected.set()
        self._notify()
        if sub_mid is None:
            self._go_online()

    def _subscribed(self, mid: int, codes: list[tuple[int, str]]) -> None:
        if mid != self._state.sub_mid or self._client is None:
            return
        pairs = zip(self.subscriptions, codes, strict=False)
        refused = [(t, reason) for (t, _q), (code, reason) in pairs if code >= 0x80]
        if refused:
            # No "online": tagwatch is not listening to what it was told to.
            log.error("subscribe_refused", topics=refused)
            self._note_error(f"SUBACK refused {refused}")
            return
        log.info("subscribed", topics=[t for t, _ in self.subscriptions])
        self._go_online()

    def _go_online(self) -> None:
        if self.online and self._client is not None:
            topic, payload = self.online
            body = payload() if callable(payload) else payload
            self._client.publish(topic, body, qos=1, retain=True)
        self.ready.set()
        self._notify()

    def _lost(self, event: str, why: str) -> None:
        self.session_lost += 1
        self.session_lost_at = time.time()
        log.critical(
            event,
            broker=self._where,
            client_id=self.settings.client_id,
            detail=f"{why}: fixes queued for tagwatch may be lost",
        )

    def _disconnected(self, reason: str, code: int = 0) -> None:
        if code == _SESSION_TAKEN_OVER and not self._closing:
            self._taken_over = True
            self._lost(
                "session_taken_over", "another client connected with tagwatch's client id"
            )
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.ready.clear()
        if not self._state.last_error.startswith("CONNACK refused"):  # keep the real cause
            self._note_error(f"disconnected: {reason}")
        self._notify()
        if self._closing:
            log.info("disconnected", broker=self._where, reason=reason)
        elif was_connected:
            log.warning("disconnected", broker=self._where, reason=reason)

    def _note_error(self, text: str) -> None:
        self._state.last_error = text

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            self._drain_pending = False
        inbox = self._inbox
        # As many as are there now; any appended meanwhile schedule the next drain.
        burst = [inbox.popleft() for _ in range(len(inbox))]
        if burst:
            self._queue.put_nowait(burst)

    def _published(self, mid: int, code: int, reason: str) -> None:
        fut = self._state.pending_pubs.get(mid)
        if fut is None or fut.done():
            return
        if code >= 0x80:
            fut.set_exception(ConnectionError(f"publish mid {mid} refused by broker: {reason}"))
        else:
            fut.set_result(None)
