"""deploy/: the shipped Mosquitto configuration and ACL, run for real, and the deployment files.

The broker tests run /usr/sbin/mosquitto on deploy/mosquitto/mosquitto.conf with
only its paths, ports and run-as user rewritten, certificates made by the
shipped deploy/mosquitto/make-certs (openssl), and credentials added by the
shipped deploy/mosquitto/tag-credentials. Every "must not arrive" check is
bounded by a control message that an allowed client publishes right after the
forbidden one: once the control message is in, the forbidden one had its chance.
"""

from __future__ import annotations

import configparser
import json
import os
import queue
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tagwatch.ingest.embedded_broker import free_port
from tagwatch.signing import load_keys, sign, verify
from tests.brokers import mosquitto_binary, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MOSQ = DEPLOY / "mosquitto"
PREFIX = "tagwatch/v1"
WAIT_S = 5.0
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87

needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None
    or shutil.which("openssl") is None,
    reason="needs mosquitto, mosquitto_passwd and openssl",
)


# --------------------------------------------------------------------------- the broker


@dataclass
class Broker:
    root: Path
    device_port: int  # 8883 in production: client certificate and password
    service_port: int  # 8884: password, certificate optional
    proc: subprocess.Popen[bytes]
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def certs(self) -> Path:
        return self.root / "config" / "certs"

    @property
    def passwd(self) -> Path:
        return self.root / "config" / "passwd"

    def log(self) -> str:
        return (self.root / "mosquitto.log").read_text(errors="replace")


def render_conf(text: str, root: Path, device_port: int, service_port: int) -> str:
    """The shipped mosquitto.conf with the test's paths, ports and run-as user."""
    text = text.replace("/mosquitto/config/", f"{root}/config/")
    text = text.replace("/mosquitto/data/", f"{root}/data/")
    out = []
    for line in text.splitlines():
        if line == "listener 8883":
            line = f"listener {device_port} 127.0.0.1"
        elif line == "listener 8884":
            line = f"listener {service_port} 127.0.0.1"
        elif line == "log_dest stdout":
            line = f"log_dest file {root}/mosquitto.log"
        elif line == "user mosquitto" and os.geteuid() == 0:
            line = "user root"  # the mosquitto user could not read the test's private files
        out.append(line)
    settings = "\n".join(line for line in out if not line.startswith("#"))
    assert "/mosquitto/" not in settings, "a path of the shipped conf was not rewritten"
    assert "listener 888" not in settings, "a port of the shipped conf was not rewritten"
    return "\n".join(out) + "\n"


def make_certs(*args: str) -> None:
    subprocess.run([str(MOSQ / "make-certs"), *args], check=True, capture_output=True)


def tag_credentials(*args: str) -> dict[str, str]:
    """Run the shipped script; its `name=value` stdout lines as a dict."""
    done = subprocess.run([str(MOSQ / "tag-credentials"), *args], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, f"tag-credentials {args}: {done.stderr}"
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def add_service_users(passwd: Path, users: dict[str, str]) -> None:
    plain = passwd.parent / "service-users"
    plain.write_text("".join(f"{name}:{pw}\n" for name, pw in users.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(plain)], check=True, capture_output=True)
    with passwd.open("a") as out:
        out.write(plain.read_text())
    plain.unlink()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto and mosquitto_passwd")
    root = tmp_path_factory.mktemp("mosquitto")
    config = root / "config"
    certs = config / "certs"
    (root / "data").mkdir()
    make_certs("ca", str(certs))
    make_certs("server", str(certs), "localhost", "127.0.0.1")
    for user in ("T-A", "T-B", "V-01", "tagwatch", "dashboard"):
        make_certs("client", str(certs), user)
    make_certs("ca", str(root / "rogue"))  # a CA the broker does not trust
    make_certs("client", str(root / "rogue"), "T-A")

    for shipped in ("acl", "service-acl"):
        shutil.copy(MOSQ / shipped, config / shipped)
    passwd = config / "passwd"
    passwords = {}
    for device, kind in (("T-A", "tag"), ("T-B", "tag"), ("V-01", "victim")):
        passwords[device] = tag_credentials("add", device, "--kind", kind, "--passwd",
                                            str(passwd), "--no-reload")["password"]
    service = {"tagwatch": uuid.uuid4().hex, "dashboard": uuid.uuid4().hex}
    add_service_users(config / "service-passwd", service)
    passwords.update(service)

    device_port, service_port = free_port(), free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(render_conf((MOSQ / "mosquitto.conf").read_text(), root, device_port,
                                service_port))
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)],  # type: ignore[list-item]
                            stdout=subprocess.DEVNULL, stderr=(root / "stderr.txt").open("wb"))
    try:
        for port in (device_port, service_port):
            wait_for_port("127.0.0.1", port, alive=lambda: proc.poll() is None)
        yield Broker(root, device_port, service_port, proc, passwords)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- clients


OWN = "<own certificate>"


class Client:
    """A paho MQTT 5 client whose events are waited on with timeouts."""

    def __init__(self, broker: Broker, user: str | None, *, device: bool = False,
                 password: str | None = None, cert: str | None = OWN,
                 ca_dir: Path | None = None, client_id: str | None = None) -> None:
        self.broker = broker
        self.port = broker.device_port if device else broker.service_port
        if cert == OWN:  # the account's own client certificate, as deployed
            cert = user
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"{user}-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        if user is not None:
            self.client.username_pw_set(user, broker.passwords.get(user) if password is None
                                        else password)
        cert_dir = ca_dir or broker.certs
        files = {} if cert is None else {"certfile": str(cert_dir / f"{cert}.pem"),
                                         "keyfile": str(cert_dir / f"{cert}.key")}
        self.client.tls_set(ca_certs=str(broker.certs / "ca.pem"), cert_reqs=ssl.CERT_REQUIRED,
                            **files)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.outcome: queue.Queue[str] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = lambda c, u: self.outcome.put("connect failed")
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.pubacks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.client.on_publish = lambda c, u, mid, rc, p: self.pubacks.put((mid, rc.value))

    def _on_connect(self, c: object, u: object, flags: object, rc: ReasonCode, p: object) -> None:
        self.outcome.put("connected" if not rc.is_failure else f"refused: {rc}")

    def _on_disconnect(self, c: object, u: object, f: object, rc: ReasonCode, p: object) -> None:
        self.outcome.put(f"disconnected: {rc}")

    def connect(self) -> str:
        """"connected", or why not (refused by CONNACK, TLS failure, connection dropped)."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (ssl.SSLError, OSError) as exc:
            return f"tls or socket error: {exc}"
        self.client.loop_start()
        try:
            return self.outcome.get(timeout=WAIT_S)
        except queue.Empty:
            return "no answer"

    def open(self) -> Client:
        outcome = self.connect()
        assert outcome == "connected", f"{outcome}; broker log:\n{self.broker.log()[-2000:]}"
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, *topics: str) -> list[ReasonCode]:
        self.client.subscribe([(t, 1) for t in topics])
        return self.subacks.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes | str) -> int:
        """Publish at QoS 1 and wait for the PUBACK; its MQTT 5 reason code."""
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                mid, code = self.pubacks.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no PUBACK for {topic} within {WAIT_S} s") from None
            if mid == info.mid:
                return code

    def until(self, topic: str) -> list[mqtt.MQTTMessage]:
        """Every message up to and including the first on `topic` (the control message)."""
        got: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + WAIT_S
        while not got or got[-1].topic != topic:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"control message on {topic} did not come; got {got}"
            try:
                got.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                continue
        return got


@pytest.fixture
def clients(broker: Broker) -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def connected(clients: list[Client], broker: Broker, user: str, **kwargs: object) -> Client:
    client = Client(broker, user, **kwargs).open()  # type: ignore[arg-type]
    clients.append(client)
    return client


def fix_topic(tag: str) -> str:
    return f"{PREFIX}/tags/{tag}/fix"


# --------------------------------------------------------------------------- the ACL and TLS


@needs_mosquitto
def test_tagwatch_receives_a_tags_signed_fix_over_tls(broker: Broker, clients: list[Client]
                                                      ) -> None:
    tagwatch = connected(clients, broker, "tagwatch")
    assert tagwatch.subscribe(f"{PREFIX}/tags/+/fix")[0].value == 1  # granted QoS 1
    tag = connected(clients, broker, "T-A", device=True, cert="T-A")
    key = bytes(range(32))
    fix = sign({"tag": "T-A", "ts": "2026-11-28T10:15:30Z", "lat": 51.5, "lon": -0.12,
                "seq": 1}, key)
    assert tag.publish(fix_topic("T-A"), json.dumps(fix)) == 0
    [message] = tagwatch.until(fix_topic("T-A"))
    assert verify(json.loads(message.payload), key, None, 0) is None


@needs_mosquitto
def test_tag_cannot_publish_to_another_tags_topic(broker: Broker, clients: list[Client]) -> None:
    tagwatch = connected(clients, broker, "tagwatch")
    tagwatch.subscribe(f"{PREFIX}/tags/+/fix", f"{PREFIX}/victims/+/fix")
    tag_a = connected(clients, broker, "T-A", device=True, cert="T-A")
    forged = [fix_topic("T-B"), f"{PREFIX}/victims/V-01/fix", f"{PREFIX}/alerts/C-0001",
              f"{PREFIX}/tags/T-B/cmd", f"{PREFIX}/status"]
    for topic in forged:
        assert tag_a.publish(topic, b'{"forged": true}') == NOT_AUTHORIZED, topic
    assert tag_a.publish(fix_topic("T-A"), b'{"control": true}') == 0
    got = tagwatch.until(fix_topic("T-A"))
    assert [m.topic for m in got] == [fix_topic("T-A")]


@needs_mosquitto
def test_tag_cannot_read_alerts_or_another_tags_commands(broker: Broker, clients: list[Client]
                                                        ) -> None:
    tag_a = connected(clients, broker, "T-A", device=True, cert="T-A")
    tag_a.subscribe(f"{PREFIX}/alerts/#", f"{PREFIX}/tags/T-B/cmd", f"{PREFIX}/tags/+/fix",
                    f"{PREFIX}/status", f"{PREFIX}/tags/T-A/cmd")
    tagwatch = connected(clients, broker, "tagwatch")
    tag_b = connected(clients, broker, "T-B", device=True, cert="T-B")
    assert tagwatch.publish(f"{PREFIX}/alerts/C-0001", b'{"type": "zone.breach"}') == 0
    assert tagwatch.publish(f"{PREFIX}/tags/T-B/cmd", b'{"cmd": "warn", "text": "x"}') == 0
    assert tagwatch.publish(f"{PREFIX}/status", b'{"state": "online"}') == 0
    assert tag_b.publish(fix_topic("T-B"), b'{"lat": 1}') == 0
    assert tagwatch.publish(f"{PREFIX}/tags/T-A/cmd", b'{"cmd": "rate", "interval_s": 5}') == 0
    got = tag_a.until(f"{PREFIX}/tags/T-A/cmd")
    assert [m.topic for m in got] == [f"{PREFIX}/tags/T-A/cmd"]


@needs_mosquitto
def test_dashboard_reads_alerts_and_status_only(broker: Broker, clients: list[Client]) -> None:
    dashboard = connected(clients, broker, "dashboard")
    dashboard.subscribe(f"{PREFIX}/tags/+/fix", f"{PREFIX}/victims/+/fix", f"{PREFIX}/alerts/#",
                        f"{PREFIX}/rejected/#")
    tag_a = connected(clients, broker, "T-A", device=True, cert="T-A")
    tagwatch = connected(clients, broker, "tagwatch")
    assert tag_a.publish(fix_topic("T-A"), b'{"lat": 1}') == 0
    assert tagwatch.publish(f"{PREFIX}/rejected/T-A", b'{"reason": "not_json"}') == 0
    # A dashboard account is no device: the deny lines beat the device patterns.
    assert dashboard.publish(fix_topic("dashboard"), b"{}") == NOT_AUTHORIZED
    assert dashboard.publish(f"{PREFIX}/alerts/C-0001", b"{}") == NOT_AUTHORIZED
    assert tagwatch.publish(f"{PREFIX}/alerts/C-0001", b'{"control": true}') == 0
    got = dashboard.until(f"{PREFIX}/alerts/C-0001")
    assert [(m.topic, m.payload) for m in got] == [(f"{PREFIX}/alerts/C-0001",
                                                    b'{"control": true}')]


@needs_mosquitto
def test_tagwatch_account_cannot_pose_as_a_device(broker: Broker, clients: list[Client]) -> None:
    tagwatch = connected(clients, broker, "tagwatch")
    assert tagwatch.publish(fix_topic("tagwatch"), b"{}") == NOT_AUTHORIZED
    assert tagwatch.publish(f"{PREFIX}/victims/tagwatch/fix", b"{}") == NOT_AUTHORIZED


@needs_mosquitto
@pytest.mark.parametrize(
    ("user", "kwargs", "layer"),
    [
        (None, {"cert": "tagwatch"}, "mqtt"),  # no credentials at all
        ("tagwatch", {"password": "wrong"}, "mqtt"),
        ("tagwatch", {"password": ""}, "mqtt"),
        ("tagwatch", {"cert": None}, "tls"),  # 8884: right password, no client certificate
        ("T-A", {}, "mqtt"),  # a device's credentials on the service listener
        (None, {"device": True, "cert": "T-A"}, "mqtt"),
        ("T-A", {"device": True, "cert": None}, "tls"),  # right password, no client certificate
        ("T-A", {"device": True, "cert": "T-A", "ca_dir": "rogue"}, "tls"),  # untrusted
        ("T-A", {"device": True, "cert": "T-A", "password": "wrong"}, "mqtt"),  # cert alone
        ("tagwatch", {"device": True}, "mqtt"),  # a service's credentials on the device one
    ],
    ids=["service-anonymous", "service-wrong-password", "service-empty-password",
         "service-password-without-certificate", "service-device-account", "device-anonymous",
         "device-no-certificate", "device-rogue-certificate", "device-certificate-without-password",
         "device-service-account"],
)
def test_refused(broker: Broker, user: str | None, kwargs: dict, layer: str) -> None:
    if kwargs.get("ca_dir") == "rogue":
        kwargs = {**kwargs, "ca_dir": broker.root / "rogue"}
    client = Client(broker, user, **kwargs)
    try:
        outcome = client.connect()
    finally:
        client.close()
    if layer == "mqtt":
        assert outcome == "refused: Not authorized"
    else:  # the TLS handshake fails, or the server drops the link before any CONNACK
        assert outcome.startswith(("tls or socket error", "disconnected")), outcome


@needs_mosquitto
def test_right_credentials_are_accepted_on_both_listeners(broker: Broker,
                                                          clients: list[Client]) -> None:
    # The control for test_refused: each refusal above differs from one of these in one thing.
    connected(clients, broker, "T-A", device=True, cert="T-A")
    connected(clients, broker, "V-01", device=True)
    connected(clients, broker, "tagwatch", cert="tagwatch")
    connected(clients, broker, "dashboard")


@needs_mosquitto
def test_a_device_cannot_take_over_tagwatchs_session(broker: Broker, clients: list[Client]
                                                     ) -> None:
    tagwatch = connected(clients, broker, "tagwatch", client_id="tagwatch-1")
    tagwatch.subscribe(f"{PREFIX}/tags/+/fix")
    # A device's right credentials, tagwatch's client id: the broker uses the username.
    thief = connected(clients, broker, "T-A", device=True, client_id="tagwatch-1")
    assert thief.publish(fix_topic("T-A"), b'{"control": true}') == 0
    # The takeover would have closed tagwatch's connection before the thief's CONNACK.
    assert [m.topic for m in tagwatch.until(fix_topic("T-A"))] == [fix_topic("T-A")]
    assert tagwatch.publish(f"{PREFIX}/status", b'{"state": "online"}') < 0x80  # accepted
    assert tagwatch.outcome.empty(), tagwatch.outcome.get()
    # Nor can a device be registered under a name that could be tagwatch's client id.
    done = subprocess.run([str(MOSQ / "tag-credentials"), "add", "tagwatch-1", "--passwd",
                           str(broker.root / "spare-passwd"), "--no-reload"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "client id" in done.stderr


@needs_mosquitto
def test_devices_publish_only_on_their_own_kind_of_path(broker: Broker, clients: list[Client]
                                                       ) -> None:
    tagwatch = connected(clients, broker, "tagwatch")
    tagwatch.subscribe(f"{PREFIX}/tags/+/fix", f"{PREFIX}/victims/+/fix")
    victim = connected(clients, broker, "V-01", device=True)
    tag = connected(clients, broker, "T-A", device=True)
    # A victim device's position on the tags path would be published as a tag's fix.
    for topic in (fix_topic("V-01"), fix_topic("T-A"), f"{PREFIX}/victims/V-02/fix"):
        assert victim.publish(topic, b'{"forged": true}') == NOT_AUTHORIZED, topic
    assert tag.publish(f"{PREFIX}/victims/T-A/fix", b'{"forged": true}') == NOT_AUTHORIZED
    assert victim.publish(f"{PREFIX}/victims/V-01/fix", b'{"control": 1}') == 0
    assert tag.publish(fix_topic("T-A"), b'{"control": 2}') == 0
    got = [m.topic for m in tagwatch.until(fix_topic("T-A"))]
    assert got == [f"{PREFIX}/victims/V-01/fix", fix_topic("T-A")]


# --------------------------------------------------------------------------- tag-credentials


def outcome_within(broker: Broker, wanted: str, **kwargs: object) -> str:
    """Connect attempts until one has the wanted outcome (the broker reloads asynchronously
    after SIGHUP); each attempt waits on its own event, the whole on a deadline."""
    deadline = time.monotonic() + WAIT_S
    while True:
        client = Client(broker, "T-C", device=True, cert="T-A", **kwargs)  # type: ignore[arg-type]
        outcome = client.connect()
        client.close()
        if outcome.startswith(wanted) or time.monotonic() > deadline:
            return outcome


@needs_mosquitto
def test_credentials_script_adds_and_revokes_with_a_reload(broker: Broker) -> None:
    pid = str(broker.proc.pid)
    password = tag_credentials("add", "T-C", "--passwd", str(broker.passwd), "--pid", pid)[
        "password"]
    assert outcome_within(broker, "connected", password=password) == "connected"

    live = Client(broker, "T-C", device=True, cert="T-A", password=password)
    assert live.connect() == "connected"
    tag_credentials("revoke", "T-C", "--passwd", str(broker.passwd), "--pid", pid)
    try:
        # The reload re-checks connected clients: the revoked tag's session is dropped.
        assert live.outcome.get(timeout=WAIT_S).startswith("disconnected")
    finally:
        live.close()
    assert outcome_within(broker, "refused", password=password) == "refused: Not authorized"


def test_credentials_script_refuses_service_names_and_bad_ids(tmp_path: Path) -> None:
    for name in ("tagwatch", "dashboard", "tagwatch-1", "Tagwatch2", "dashboard-b", "T/1", "+",
                 "T 1", "a:b"):
        done = subprocess.run([str(MOSQ / "tag-credentials"), "add", name, "--passwd",
                               str(tmp_path / "passwd"), "--no-reload"], capture_output=True,
                              text=True)
        assert done.returncode == 2, name
        assert not (tmp_path / "passwd").exists()


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_credentials_script_rotates_password_and_signing_key(tmp_path: Path) -> None:
    passwd, keys = tmp_path / "passwd", tmp_path / "tag-keys"
    common = ["--passwd", str(passwd), "--keys", str(keys), "--no-reload"]
    first = tag_credentials("add", "T-1", *common)
    tag_credentials("add", "T-2", *common)
    second = tag_credentials("rotate", "T-1", *common)
    assert first["password"] != second["password"] and first["key"] != second["key"]
    assert load_keys(keys)["T-1"] == bytes.fromhex(second["key"])
    assert keys.stat().st_mode & 0o077 == 0
    tag_credentials("revoke", "T-1", *common)
    assert set(load_keys(keys)) == {"T-2"}
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == ["T-2"]


# --------------------------------------------------------------------------- deployment files

SANDBOX = {
    "ProtectSystem": "strict", "NoNewPrivileges": "yes", "DynamicUser": "yes",
    "StateDirectory": "tagwatch", "ReadWritePaths": "/var/lib/tagwatch", "PrivateTmp": "yes",
    "ProtectHome": "yes", "CapabilityBoundingSet": "", "Restart": "always",
    "ExecReload": "/bin/kill -HUP $MAINPID",
}


def unit_service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((DEPLOY / "tagwatch.service").read_text())
    return parser["Service"]


def test_systemd_unit_is_sandboxed() -> None:
    service = unit_service_section()
    for key, value in SANDBOX.items():
        assert service.get(key) == value, key
    assert service["ExecStart"].endswith("tagwatch run --config /etc/tagwatch/tagwatch.toml")
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["EnvironmentFile"].startswith("/etc/tagwatch/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's tagwatch.
    tagwatch = shutil.which("tagwatch", path=str(ROOT / ".venv" / "bin")) or shutil.which(
        "tagwatch")
    if tagwatch is None:
        pytest.skip("no tagwatch executable to stand in for /opt/tagwatch/venv/bin/tagwatch")
    unit = tmp_path / "tagwatch.service"
    unit.write_text((DEPLOY / "tagwatch.service").read_text().replace(
        "/opt/tagwatch/venv/bin/tagwatch", tagwatch))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Unknown or misspelt keys are only warnings ("Unknown key ... ignoring").
    complaints = [line for line in done.stderr.splitlines() if str(unit) in line]
    assert not complaints, complaints


def compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not compose_available(), reason="docker compose plugin not installed")
def test_docker_compose_config_validates(tmp_path: Path) -> None:
    # `compose config` needs no engine, but the files it references must exist.
    done = subprocess.run(["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config",
                           "--quiet", "--no-interpolate"], capture_output=True, text=True,
                          timeout=60)
    if "env file" in done.stderr or "secrets" in done.stderr:
        pytest.skip(f"the local secrets files are not set up: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr


try:
    import yaml
except ImportError:  # only the YAML structure checks need it
    yaml = None
needs_yaml = pytest.mark.skipif(yaml is None, reason="pyyaml not installed")


@needs_yaml
def test_compose_file_structure() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "postgres", "tagwatch", "simulator"}
    assert services["simulator"]["profiles"] == ["sim"]
    assert all("profiles" not in s for name, s in services.items() if name != "simulator")
    mounts = " ".join(services["mosquitto"]["volumes"])
    for shipped in ("mosquitto.conf", "acl", "service-acl", "passwd", "service-passwd"):
        assert f"./mosquitto/{shipped}:/mosquitto/config/{shipped}" in mounts
    assert "/mosquitto/data" in mounts
    assert services["tagwatch"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["tagwatch"]["environment"]["TAGWATCH_BROKER_URL"].startswith("mqtts://")
    text = (DEPLOY / "compose.yaml").read_text()
    assert "PASSWORD:" not in text.replace("POSTGRES_PASSWORD_FILE:", "")


@needs_yaml
def test_compose_simulator_command_is_valid_for_tagwatch_sim() -> None:
    """The sim profile's command parses with tagwatch-sim's own parser, reaches the broker
    service over TLS with the mounted CA and a username, and is within load's bounds."""
    from simulators import broker
    from simulators.cli import _parser
    from simulators.load import check_bounds

    sim = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["simulator"]
    assert sim["entrypoint"] == ["tagwatch-sim"]
    args = _parser().parse_args(sim["command"])
    options = broker.from_args(args)
    assert (options.host, options.port, options.tls) == ("mosquitto", 8884, True)
    assert options.username and options.ca_file
    assert options.ca_file in {v.split(":")[1] for v in sim["volumes"]}
    assert sim["env_file"] == ["./secrets/simulator.env"]
    check_bounds(args.tags, args.rate, args.duration)
    acls = " ".join(f.read_text() for f in MOSQ.iterdir() if f.name.endswith("acl"))
    assert f"# user {options.username}\n" in acls  # the staging account it logs in as


def test_dockerfile() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert next(line for line in lines if line.startswith("FROM")) == "FROM python:3.11-slim"
    users = [line for line in lines if line.startswith("USER ")]
    assert users and not users[-1].startswith(("USER root", "USER 0"))
    assert any("/healthz" in line and "urllib" in line for line in lines)
    assert 'ENTRYPOINT ["tagwatch", "run", "--config", "/etc/tagwatch/tagwatch.toml"]' in lines


def _exported_metrics() -> tuple[str, ...]:
    """The metric names the daemon really exports (not the *_created timestamps)."""
    from tagwatch.daemon.metrics import Metrics

    names = []
    for line in Metrics().render().decode().splitlines():
        if line.startswith("# TYPE ") and not line.split()[2].endswith("_created"):
            names.append(line.split()[2])
    return tuple(names)


METRICS = _exported_metrics()
MUST_WAKE = {"TagwatchDown": "tagwatch_up", "TagwatchBrokerDisconnected":
             "tagwatch_broker_connected", "TagwatchOutboxGrowing": "tagwatch_outbox_depth",
             "TagwatchDeliveriesFailing": "tagwatch_deliveries_failed_total",
             "TagwatchRecordWritesFailing": "tagwatch_record_write_errors_total",
             "TagwatchTagsSilentEnMasse": "tagwatch_tags_silent"}


@needs_yaml
def test_alert_rules_are_complete() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rules = {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}
    for name, metric in MUST_WAKE.items():
        assert metric in rules[name]["expr"], name
        assert rules[name]["labels"]["severity"] == "page", name
    for name, rule in rules.items():
        assert rule["expr"].strip() and rule["for"], name
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert {"summary", "description"} <= set(rule["annotations"]), name
    used = " ".join(rule["expr"] for rule in rules.values())
    documented = (DEPLOY / "METRICS.md").read_text()
    for metric in METRICS:
        assert f"`{metric}`" in documented, metric
    for word in used.replace("(", " ").replace("{", " ").replace("[", " ").split():
        if word.startswith("tagwatch_"):
            assert word in METRICS, f"alerts.yml uses {word}, which METRICS.md does not define"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_yaml
def test_scrape_config_targets_the_feed_metrics() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "scrape.yml").read_text())
    [job] = doc["scrape_configs"]
    assert job["job_name"] == "tagwatch" and job["metrics_path"] == "/metrics"
