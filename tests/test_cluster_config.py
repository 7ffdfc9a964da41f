"""The [cluster] section (DESIGN 7) and a broker url listing several nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagwatch.config import ClusterConfig, load_config
from tests.test_config import refused, write

PG = '[record]\nurl = "postgresql://tagwatch@db:5432/tagwatch"\n'


def test_no_cluster_section_means_single_process(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, PG), {}).cluster is None
    assert load_config(None, {}).cluster is None


def test_the_design_example_loads(tmp_path: Path) -> None:
    text = (
        '[broker]\nurl = "mqtt://10.0.0.1:1883,10.0.0.2:1883,10.0.0.3"\n' + PG
        + '[cluster]\nworker = "w1"\npartitions = 16\npartition_prefix = "tw/tags"\n'
        "lease_ttl_s = 3\n"
    )
    config = load_config(write(tmp_path, text), {})
    assert config.cluster == ClusterConfig("w1", 16, "tw/tags", 3.0)
    assert config.broker.nodes == (("10.0.0.1", 1883), ("10.0.0.2", 1883), ("10.0.0.3", 1883))
    assert (config.broker.host, config.broker.port) == ("10.0.0.1", 1883)


def test_the_environment_overrides_and_can_add_the_section(tmp_path: Path) -> None:
    env = {"TAGWATCH_CLUSTER_WORKER": "w7", "TAGWATCH_CLUSTER_LEASE_TTL_S": "2.5"}
    config = load_config(write(tmp_path, PG), env)
    assert config.cluster == ClusterConfig("w7", 16, "tw/tags", 2.5)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[cluster]\nworker = "w1"\n', "[cluster] worker: cluster mode needs a PostgreSQL record"),
        (PG + "[cluster]\npartitions = 4\n", "[cluster] worker: required"),
        (PG + '[cluster]\nworker = "w1"\nleases = 3\n', "[cluster] leases: unknown key"),
        (PG + '[cluster]\nworker = "a b"\n', '[cluster] worker: "a b": use 1-64'),
        (PG + '[cluster]\nworker = "w1"\npartitions = 0\n', "[cluster] partitions: must be from"),
        (PG + '[cluster]\nworker = "w1"\nlease_ttl_s = 0\n', "[cluster] lease_ttl_s: must be"),
        (PG + '[cluster]\nworker = "w1"\npartition_prefix = "tw/+"\n', "partition_prefix"),
        ('[broker]\nurl = "mqtt://a:1883,,b"\n', "[broker] url: node 2 of the url is empty"),
        ('[broker]\nurl = "mqtt://a:1883,b:x"\n', "[broker] url: the port is not a number"),
    ],
)
def test_a_bad_cluster_setting_is_refused_naming_the_key(
    tmp_path: Path, text: str, error: str
) -> None:
    assert error in refused(tmp_path, text)
