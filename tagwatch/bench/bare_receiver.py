"""The bare receiver of `tagwatch bench e2e`, in a process of its own.

A paho-mqtt subscriber (MQTT 5, QoS 1, paho's automatic acknowledgement) that
only counts what it receives. It runs in its own process, as `tagwatch run`
does, so neither competes with the benchmark's publisher for one interpreter's
lock. It prints `ready` once subscribed, then its count whenever it changed,
at most every 5 ms, until its stdin closes.

    python -m tagwatch.bench.bare_receiver HOST PORT CLIENT_ID TOPIC
    (TAGWATCH_BENCH_USERNAME / TAGWATCH_BENCH_PASSWORD: broker credentials)
"""

from __future__ import annotations

import os
import sys
import threading
import time

import paho.mqtt.client as mqtt

REPORT_S = 0.005


def main(host: str, port: int, client_id: str, topic: str) -> int:
    received = [0]
    subscribed = threading.Event()

    def on_message(_client, _userdata, _msg) -> None:
        received[0] += 1  # only paho's thread writes it

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if os.environ.get("TAGWATCH_BENCH_USERNAME"):
        client.username_pw_set(
            os.environ["TAGWATCH_BENCH_USERNAME"], os.environ.get("TAGWATCH_BENCH_PASSWORD")
        )
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(host, port, clean_start=True)
    client.loop_start()
    client.subscribe(topic, qos=1)
    if not subscribed.wait(10):
        print(f"error: no SUBACK for {topic} within 10 s", flush=True)
        return 1
    print("ready", flush=True)
    stdin_closed = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the benchmark closes our stdin
        stdin_closed.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    last = -1
    while not stdin_closed.is_set():
        if received[0] != last:
            last = received[0]
            print(last, flush=True)
        time.sleep(REPORT_S)
    client.disconnect()
    return 0


if __name__ == "__main__":
    host, port, client_id, topic = sys.argv[1:5]
    sys.exit(main(host, int(port), client_id, topic))
