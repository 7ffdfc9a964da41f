"""Benchmark (not a test): CPU per received QoS 1 PUBLISH on paho's reading path.

    .venv/bin/python tests/bench_paho_read.py [--messages 100000] [--runs 2]

Streams the same fix messages (MQTT 5, QoS 1, no properties, as tags send them) through a
socket pair into a paho client under manual acknowledgement, four ways in one run:
paho 2.2 as shipped, with paho_fast's decoder and buffered reader, with its direct
PUBLISH delivery for packets paho has read, and with whole packets in the buffer
delivered without paho's reading. Prints microseconds of CPU (this process) per message.
"""

from __future__ import annotations

import argparse
import select
import socket
import threading
import time

import msgspec
import paho.mqtt.client as paho

from tagwatch.ingest import paho_fast

WAYS = ("paho", "buffered reader", "direct delivery", "direct + whole packets")


def _packet(i: int) -> bytes:
    topic = f"tagwatch/v1/tags/T-{i % 1000:05d}/fix".encode()
    payload = msgspec.json.encode(
        {"ts": 1_764_324_930.0 + i, "lat": 51.5, "lon": -0.12, "acc": 8, "seq": i}
    )
    body = len(topic).to_bytes(2, "big") + topic + (i % 65535 + 1).to_bytes(2, "big") + b"\0"
    body += payload
    length, n = b"", len(body)
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            return b"\x32" + length + body


def _client(way: str, count: list[int]) -> paho.Client:
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="b", protocol=paho.MQTTv5, manual_ack=True
    )

    def deliver(topic: str, payload: bytes, qos: int, mid: int, retain: bool, dup: bool) -> None:
        count[0] += 1

    def on_message(_c, _u, m: paho.MQTTMessage) -> None:
        deliver(m.topic, bytes(m.payload), m.qos, m.mid, bool(m.retain), bool(m.dup))

    client.on_message = on_message
    if way != "paho":
        paho_fast.install_client(client, deliver if way.startswith("direct") else None)
    if way == "direct delivery":
        client._sock_recv.__self__.direct = None  # paho reads every packet
    return client


def _cpu_per_message(way: str, stream: bytes, messages: int) -> float:
    paho_fast._packet.decode_publish = getattr(
        paho_fast._packet.decode_publish, "stock", paho_fast._packet.decode_publish
    )
    if way != "paho":
        paho_fast.install()
    count = [0]
    client = _client(way, count)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    feeder = threading.Thread(target=theirs.sendall, args=(stream,))
    feeder.start()
    start = time.process_time()
    while count[0] < messages:
        select.select([ours], [], [], 1.0)
        client.loop_read()
    cpu = time.process_time() - start
    feeder.join()
    ours.close()
    theirs.close()
    return cpu / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    if not paho_fast.supported():
        raise SystemExit(f"paho_fast is off on paho {paho_fast.PAHO_VERSION}: nothing to compare")
    stream = b"".join(_packet(i) for i in range(args.messages))
    for run in range(args.runs):
        figures = {way: _cpu_per_message(way, stream, args.messages) for way in WAYS}
        text = ", ".join(f"{way} {us:.2f}" for way, us in figures.items())
        print(f"run {run + 1}: us of CPU per message: {text}")


if __name__ == "__main__":
    main()
