"""The three-node NATS harness itself (tests/nats_cluster.py): kill -9, restart, SIGSTOP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tagwatch.ingest.partitions import partition_of

from .nats_cluster import PARTITIONS, NatsCluster, mqtt_connack, running_cluster
from .test_nats_cluster import Publisher, Subscriber


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    yield from running_cluster(tmp_path / "nats")


@pytest.mark.slow
def test_the_harness_restarts_a_killed_node_and_resumes_a_paused_one(
        nats_cluster: NatsCluster) -> None:
    cluster = nats_cluster
    cluster.kill(2)
    assert not cluster.nodes[2].running
    # Same ports, same store; waits until it routes and CONNACKs (its MQTT took 6-12 s).
    cluster.restart(2)
    cluster.pause(1)
    assert not mqtt_connack(cluster.mqtt_port(1), timeout_s=0.5)  # a hung node answers nothing
    cluster.resume(1)
    cluster.wait_ready()
    tag = "T-0042"
    p = partition_of(tag, PARTITIONS)
    worker = Subscriber(f"tagwatch-p{p}", f"tw/tags/{p}/+")
    worker.connect(cluster.mqtt_port(1), subscribe=True)
    try:
        Publisher(cluster, 2).run([(f"tagwatch/v1/tags/{tag}/fix", b"after")])
        assert worker.wait_for(lambda got: len(got) >= 1)
        assert worker.received == [(f"tw/tags/{p}/{tag}", b"after")]
    finally:
        worker.drop()
