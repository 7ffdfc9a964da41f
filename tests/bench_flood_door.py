"""Benchmark (not a test): the daemon's CPU per message of a one-tag flood on its receive
path (issue 16.8), against a message that enters.

    .venv/bin/python -m tests.bench_flood_door [--messages 100000] [--runs 3]

Streams QoS 1 fix PUBLISH packets (MQTT 5, no properties) through a socket pair into
the daemon's MqttConnection client (paho with paho_fast, as `tagwatch run` builds it),
three ways in one run: every message on one tag's topic with the daemon's RateGate
(10/s, burst 1,000: all but the first thousand are over the limit: decided from the
topic on paho's thread and acknowledged in one write per read), the same flood the way
before (each a Message, then the gate in the batcher, then ack_many), and the same messages
spread over 1,000 tags without a door (each becomes a Message in the inbox for the event
loop: the part of a fix's cost before the batcher). Prints microseconds of CPU of the
receiving thread per message; the CPU time counts only this thread, so a loaded machine
changes it far less than wall time.
"""

from __future__ import annotations

import argparse
import select
import socket
import threading
import time

from tagwatch.ingest import paho_fast
from tagwatch.ingest.batcher import RateGate
from tagwatch.ingest.mqtt import BrokerSettings, MqttConnection
from tagwatch.ingest.ratelimit import TokenBuckets
from tests.bench_paho_read import _packet


def _flood_packet(i: int) -> bytes:
    return _packet(i * 1000)  # T-00000 every time: one tag


def _gate_after(conn: MqttConnection, buckets: TokenBuckets) -> None:
    """The way before the door (932dc3d..ead7632): every message became a Message in the
    inbox; the batcher's pump then took each burst through the gate, and the excess was
    acknowledged by ack_many (the event loop's own work is not counted here)."""
    burst = [conn._inbox.popleft() for _ in range(len(conn._inbox))]
    excess = []
    for msg in burst:
        if not buckets.admit(msg.topic, msg.received):
            buckets.report_due(msg.topic, msg.received)
            excess.append(msg)
    link = conn._link
    current = [m for m in excess if m.qos > 0 and m.connection == link]
    paho_fast.ack_all(conn._client, [m.mid for m in current if m.qos == 1])
    conn.before_dropped += len(burst)  # handled: kept or acknowledged


def _cpu_per_message(way: str, stream: bytes, messages: int) -> tuple[float, int]:
    door = way == "door"
    gate = RateGate(TokenBuckets(10.0, 1000), on_dropped=lambda n: None) if door else None
    conn = MqttConnection(BrokerSettings("127.0.0.1"), [], door=gate)
    client = conn._make_client(5)
    conn._client = client
    conn.before_dropped = 0  # type: ignore[attr-defined]
    before = TokenBuckets(10.0, 1000) if way == "before" else None
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    client._state = 1  # connected: paho writes the PUBACKs out
    feeder = threading.Thread(target=theirs.sendall, args=(stream,))
    drain = threading.Thread(target=lambda: [None for _ in iter(lambda: theirs.recv(1 << 16), b"")])
    feeder.start()
    drain.start()
    dropped = [0]
    if gate is not None:
        gate.on_dropped = lambda n: dropped.__setitem__(0, dropped[0] + n)
    start = time.thread_time()
    while dropped[0] + len(conn._inbox) + conn.before_dropped < messages:
        select.select([ours], [], [], 1.0)
        client.loop_read()
        if before is not None:
            _gate_after(conn, before)
        client.loop_write()
    cpu = time.thread_time() - start
    feeder.join()
    ours.close()
    drain.join()
    theirs.close()
    return cpu / messages * 1e6, dropped[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    flood = b"".join(_flood_packet(i) for i in range(args.messages))
    spread = b"".join(_packet(i) for i in range(args.messages))
    for run in range(args.runs):
        door_us, dropped = _cpu_per_message("door", flood, args.messages)
        before_us, _ = _cpu_per_message("before", flood, args.messages)
        enter_us, _ = _cpu_per_message("enter", spread, args.messages)
        print(
            f"run {run + 1}: us of CPU per message: flood over the limit, at the door "
            f"{door_us:.2f} ({dropped:,} of {args.messages:,} dropped and acknowledged), "
            f"the way before {before_us:.2f}; a message entering (to the inbox) {enter_us:.2f}"
        )


if __name__ == "__main__":
    main()
