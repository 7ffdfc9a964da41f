"""The shipped NATS cluster configuration (deploy/nats/, deploy/compose.cluster.yml).

The shipped nats.conf runs as three real nodes (its ports moved to free loopback ones,
certificates from deploy/mosquitto/make-certs): routes with TLS and a password, the MQTT
listener wanting a client certificate and a password, the service user reading the
partition a tag's fix is mapped to.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tagwatch.ingest.partitions import partition_of

from .nats_cluster import NatsCluster, NatsNode, mqtt_connack, nats_server_binary
from .test_nats_cluster import device_entry

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SHIPPED = DEPLOY / "nats"
SERVICE = ("tagwatch", "service-secret")


def _openssl_missing() -> bool:
    return shutil.which("openssl") is None


def make_certs(certs: Path) -> None:
    tool = ["bash", str(DEPLOY / "mosquitto" / "make-certs")]
    for args in (["ca"], ["server", "127.0.0.1", "localhost"], ["client", "tagwatch"]):
        subprocess.run([*tool, args[0], str(certs), *args[1:]], check=True,
                       capture_output=True, timeout=60)
    subprocess.run(["bash", str(SHIPPED / "make-route-cert"), str(certs), "127.0.0.1"],
                   check=True, capture_output=True, timeout=60)


def shipped_node_conf(workdir: Path, certs: Path) -> Callable[[NatsNode], str]:
    """The shipped nats.conf with a node's loopback ports, its store and the test certs."""
    text = (SHIPPED / "nats.conf").read_text()

    def conf(node: NatsNode) -> str:
        moved = (text.replace("0.0.0.0:4222", f"127.0.0.1:{node.client_port}")
                 .replace("0.0.0.0:8222", f"127.0.0.1:{node.http_port}")
                 .replace("0.0.0.0:6222", f"127.0.0.1:{node.route_port}")
                 .replace("0.0.0.0:8883", f"127.0.0.1:{node.mqtt_port}")
                 .replace("/etc/nats/certs", str(certs))
                 .replace('"/data"', f'"{workdir / node.name}"')
                 .replace("$NATS_SERVER_NAME", node.name))
        assert "0.0.0.0" not in moved and "/etc/nats" not in moved
        return moved

    return conf


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[tuple[NatsCluster, Path]]:
    if nats_server_binary() is None:
        pytest.skip("no nats-server binary")
    if _openssl_missing():
        pytest.skip("openssl not installed (make-certs needs it)")
    workdir, certs = tmp_path / "nats", tmp_path / "certs"
    workdir.mkdir()
    make_certs(certs)
    shutil.copy(SHIPPED / "accounts.conf", workdir / "accounts.conf")
    users = (SHIPPED / "users.conf").read_text().rstrip()
    (workdir / "users.conf").write_text(users[:-1] + device_entry("T-1001", "t1-secret") + "]\n")
    cluster = NatsCluster(workdir, probe_auth=SERVICE, probe_tls=client_tls(certs, True),
                          node_conf=shipped_node_conf(workdir, certs),
                          env={"TAGWATCH_NATS_PASSWORD": SERVICE[1],
                               "DASHBOARD_NATS_PASSWORD": "dash-secret",
                               "NATS_ROUTE_PASSWORD": "route-secret"})
    for i, node in enumerate(cluster.nodes, start=1):
        cluster.env[f"NATS_ROUTE_{i}"] = f"nats-route://route:route-secret@127.0.0.1:{node.route_port}"
    try:
        yield cluster.start(), certs
    finally:
        cluster.stop()


def test_the_shipped_nats_conf_forms_a_tls_cluster_whose_mqtt_wants_cert_and_password(
        shipped: tuple[NatsCluster, Path]) -> None:
    cluster, certs = shipped
    port = cluster.mqtt_port(0)
    tls = client_tls(certs, with_cert=True)
    assert not _connack_or_false(port, SERVICE, None)  # plain TCP
    assert not _connack_or_false(port, SERVICE, client_tls(certs, with_cert=False))
    assert not mqtt_connack(port, auth=("tagwatch", "wrong"), tls=tls)
    # A tag's fix at node 2 reaches its partition's session at node 1, over TLS.
    tag = "T-1001"
    p = partition_of(tag, 16)
    got: list[tuple[str, bytes]] = []
    arrived, subscribed = threading.Event(), threading.Event()
    sub = _client(f"tagwatch-p{p}", SERVICE, tls, clean=False)
    sub.on_message = lambda _c, _u, m: (got.append((m.topic, m.payload)), arrived.set())
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect("127.0.0.1", cluster.mqtt_port(1))
    sub.loop_start()
    try:
        sub.subscribe(f"tw/tags/{p}/+", qos=1)
        assert subscribed.wait(30)
        pub = _client(tag, (tag, "t1-secret"), tls, clean=True)
        pub.connect("127.0.0.1", cluster.mqtt_port(2))
        pub.loop_start()
        done = pub.publish(f"tagwatch/v1/tags/{tag}/fix", b"fix", qos=1)
        done.wait_for_publish(30)
        pub.loop_stop()
        assert done.is_published()
        assert arrived.wait(30)
        assert got == [(f"tw/tags/{p}/{tag}", b"fix")]
    finally:
        sub.loop_stop()


def client_tls(certs: Path, with_cert: bool) -> ssl.SSLContext:
    tls = ssl.create_default_context(cafile=certs / "ca.pem")
    if with_cert:
        tls.load_cert_chain(certs / "tagwatch.pem", certs / "tagwatch.key")
    return tls


def _client(client_id: str, auth: tuple[str, str], tls: ssl.SSLContext,
            clean: bool) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=clean)
    client.username_pw_set(*auth)
    client.tls_set_context(tls)
    return client


def _connack_or_false(port: int, auth: tuple[str, str], tls: ssl.SSLContext | None) -> bool:
    try:
        return mqtt_connack(port, auth=auth, tls=tls)
    except (OSError, ssl.SSLError):
        return False


@pytest.mark.parametrize("binary", [b for b in ("/usr/sbin/nats-server",) if Path(b).exists()]
                         + ["newest"])
def test_the_shipped_config_parses_on_debian_and_newest_nats_server(
        binary: str, tmp_path: Path) -> None:
    found = nats_server_binary()
    if found is None or _openssl_missing():
        pytest.skip("no nats-server binary or no openssl")
    exe = found[0] if binary == "newest" else binary
    certs = tmp_path / "certs"
    make_certs(certs)
    for name in ("accounts.conf", "users.conf"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    conf = (SHIPPED / "nats.conf").read_text().replace("/etc/nats/certs", str(certs))
    (tmp_path / "nats.conf").write_text(conf.replace('"/data"', f'"{tmp_path / "data"}"'))
    env = {"NATS_SERVER_NAME": "nats-1", "NATS_ROUTE_PASSWORD": "r",
           "TAGWATCH_NATS_PASSWORD": "t", "DASHBOARD_NATS_PASSWORD": "d",
           **{f"NATS_ROUTE_{i}": f"nats-route://route:r@nats-{i}:6222" for i in (1, 2, 3)}}
    done = subprocess.run([exe, "-t", "-c", str(tmp_path / "nats.conf")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout + done.stderr


def test_the_shipped_mapping_has_the_partition_count_of_the_worker_example() -> None:
    accounts = (SHIPPED / "accounts.conf").read_text()
    mapping = re.search(r'"tagwatch\.v1\.tags\.\*\.fix":\s*"tw\.tags\.\{\{partition\((\d+),1\)\}\}'
                        r'\.\{\{wildcard\(1\)\}\}"', accounts)
    assert mapping, "accounts.conf lost the partition mapping"
    example = tomllib.loads((SHIPPED / "tagwatch-cluster.example.toml").read_text())
    assert int(mapping.group(1)) == example["cluster"]["partitions"]
    assert example["cluster"]["partition_prefix"] == "tw/tags"



def test_the_shipped_ack_wait_is_below_the_worker_examples_lease_ttl() -> None:
    """docs/CLUSTER.md: with ack_wait above lease_ttl_s a new owner gets a tag's newer
    fixes before the old owner's unacknowledged ones, and alerts differ from replay."""
    wait = re.search(r'^\s*ack_wait:\s*"(\d+)s"', (SHIPPED / "nats.conf").read_text(), re.M)
    assert wait, "nats.conf lost its mqtt ack_wait"
    example = tomllib.loads((SHIPPED / "tagwatch-cluster.example.toml").read_text())
    assert int(wait.group(1)) < example["cluster"]["lease_ttl_s"]

try:
    import yaml
except ImportError:
    yaml = None


@pytest.mark.skipif(yaml is None, reason="pyyaml not installed")
def test_the_cluster_compose_file_has_three_nats_nodes_postgres_and_two_workers() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.cluster.yml").read_text())
    services = compose["services"]
    assert set(services) == {"nats-1", "nats-2", "nats-3", "postgres", "worker-1", "worker-2"}
    names = set()
    for i in (1, 2, 3):
        node = services[f"nats-{i}"]
        assert node["environment"]["NATS_SERVER_NAME"] == f"nats-{i}"
        mounts = " ".join(node["volumes"])
        for shipped_file in ("nats.conf", "accounts.conf", "users.conf"):
            assert f"./nats/{shipped_file}:/etc/nats/{shipped_file}:ro" in mounts
        assert f"nats-{i}-data:/data" in mounts
        names.add(node["hostname"])
    assert names == {"nats-1", "nats-2", "nats-3"}
    workers = [services["worker-1"], services["worker-2"]]
    assert {w["environment"]["TAGWATCH_CLUSTER_WORKER"] for w in workers} == {"w1", "w2"}
    for w in workers:
        env = w["environment"]
        assert env["TAGWATCH_BROKER_URL"] == "mqtts://nats-1:8883,nats-2:8883,nats-3:8883"
        assert env["TAGWATCH_RECORD_URL"].startswith("postgresql://")
        assert env["TAGWATCH_BROKER_CLIENT_ID"] == "tagwatch"  # one session per partition
        assert set(w["depends_on"]) >= {"nats-1", "nats-2", "nats-3", "postgres"}
    text = (DEPLOY / "compose.cluster.yml").read_text()
    assert "PASSWORD:" not in text.replace("POSTGRES_PASSWORD_FILE:", "")


def compose_command() -> list[str] | None:
    """`docker compose` (v2), else Debian's docker-compose 1.29 (no top-level `name:`)."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(compose_command() is None, reason="neither docker compose nor docker-compose")
def test_compose_accepts_the_cluster_file(tmp_path: Path) -> None:
    # A copy with the files the operator makes (README) present but empty.
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("secrets", "certs"))
    (copy / "secrets").mkdir()
    for made in ("secrets/nats.env", "secrets/tagwatch.env", "secrets/postgres-password",
                 "secrets/tag-keys", "tagwatch-cluster.toml"):
        (copy / made).write_text("")
    command = compose_command()
    assert command is not None
    text = (copy / "compose.cluster.yml").read_text()
    if command == ["docker-compose"]:
        text = re.sub(r"(?m)^name: .*$", "", text)
    (copy / "compose.cluster.yml").write_text(text)
    done = subprocess.run([*command, "-f", str(copy / "compose.cluster.yml"), "config"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"] if yaml else {}
    assert not yaml or set(services) == {"nats-1", "nats-2", "nats-3", "postgres",
                                         "worker-1", "worker-2"}
