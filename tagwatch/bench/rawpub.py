"""A minimal MQTT 3.1.1 QoS 1 publisher on a raw socket, for the benchmarks.

paho-mqtt publishes about 8,000 QoS 1 messages/s from one Python process (each
publish and each PUBACK costs a trip through its loop), which would make the
publisher, not the receiver under test, the bottleneck. Here PUBLISH packets are
encoded before the clock starts and written in chunks; a reader thread counts the
PUBACKs. The broker sees ordinary QoS 1 publishes from one client.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """One QoS 1 PUBLISH; packet ids must be 1..65535."""
    body = _string(topic.encode()) + struct.pack("!H", packet_id) + payload
    return b"\x32" + _remaining(len(body)) + body


def packets(messages: list[tuple[str, bytes]]) -> list[bytes]:
    return [publish_packet(t, p, i % 65535 + 1) for i, (t, p) in enumerate(messages)]


class RawPublisher:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_id = f"bench-rawpub-{uuid.uuid4().hex[:8]}".encode()
        # protocol MQTT level 4, clean session, keep-alive 0 (none: no PINGREQ needed)
        var = _string(b"MQTT") + b"\x04\x02\x00\x00"
        body = var + _string(client_id)
        self.sock.sendall(b"\x10" + _remaining(len(body)) + body)
        connack = self._read(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker {host}:{port} refused the connection: {connack!r}")
        self.sock.settimeout(None)
        self.acked = 0
        self._reader = threading.Thread(target=self._count_acks, daemon=True)
        self._reader.start()

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return data

    def _count_acks(self) -> None:
        # The broker sends only PUBACKs (4 bytes each) to a publisher without subscriptions.
        pending = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            whole = len(pending) // 4
            self.acked += whole
            pending = pending[whole * 4 :]

    def send(self, chunk: list[bytes]) -> None:
        self.sock.sendall(b"".join(chunk))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()
