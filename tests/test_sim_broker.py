"""tagwatch-sim has the daemon's broker options (issue 18 item 8): mqtts:// with a CA
file, a client certificate and key, a username and the password from the environment,
against a real Mosquitto whose TLS listener requires a certificate and a password
(certificates from the shipped deploy/mosquitto/make-certs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import parse
from tagwatch.ingest.embedded_broker import free_port
from tests.brokers import unique_client_id, unique_prefix

ROOT = Path(__file__).resolve().parent.parent
MAKE_CERTS = ROOT / "deploy" / "mosquitto" / "make-certs"

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None,
    reason="needs openssl and mosquitto_passwd")


def _certs(folder: Path) -> Path:
    for args in (["ca"], ["server", "127.0.0.1", "localhost"], ["client", "sim"]):
        subprocess.run([str(MAKE_CERTS), args[0], str(folder), *args[1:]], check=True,
                       capture_output=True)
    return folder


class _Fixes:
    """Counts the fixes under a prefix, on the broker's plain listener, as user sim."""

    def __init__(self, port: int, prefix: str) -> None:
        self.count, self.cond, subscribed = 0, threading.Condition(), threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique_client_id("fx"))
        self.client.username_pw_set("sim", "sim-pw")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/tags/+/fix", 1)
        assert subscribed.wait(10)

    def _on_message(self, *_a) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n, 15)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _sim(*args: str, password: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "PASSWORD" not in k}
    if password is not None:
        env["TAGWATCH_SIM_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "simulators.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_load_over_tls_with_client_certificate_and_password(tmp_path: Path,
                                                            mosquitto_factory) -> None:
    certs = _certs(tmp_path / "certs")
    tls_port = free_port()
    broker = mosquitto_factory(users={"sim": "sim-pw"}, extra_conf=(
        f"listener {tls_port} 127.0.0.1\ncafile {certs / 'ca.pem'}\n"
        f"certfile {certs / 'server.pem'}\nkeyfile {certs / 'server.key'}\n"
        "require_certificate true\n"))
    prefix = unique_prefix()
    fixes = _Fixes(broker.port, prefix)
    url = f"mqtts://127.0.0.1:{tls_port}"
    tls = ["--ca-file", str(certs / "ca.pem"), "--cert-file", str(certs / "sim.pem"),
           "--key-file", str(certs / "sim.key"), "--username", "sim"]
    load = ["load", "--broker", url, *tls, "--prefix", prefix, "--tags", "2", "--rate", "20",
            "--duration", "1"]
    try:
        done = _sim(*load, password="sim-pw")
        assert done.returncode == 0, done.stderr
        sent = int(done.stdout.split("sent ", 1)[1].split(" ", 1)[0])
        assert sent > 0 and fixes.wait(sent), f"{fixes.count} of {sent} fixes arrived"

        wrong = _sim(*load, password="not-it")
        assert wrong.returncode == 1 and url in wrong.stderr, wrong.stderr
        assert "not-it" not in wrong.stdout + wrong.stderr
        no_cert = _sim(*[a for a in load if "sim." not in a and a not in (
            "--cert-file", "--key-file")], password="sim-pw")
        assert no_cert.returncode == 1, no_cert.stderr
    finally:
        fixes.close()


def test_broker_options_refuse_credentials_in_the_url_and_tls_files_without_mqtts() -> None:
    with pytest.raises(ValueError, match="credentials in the URL"):
        parse("mqtts://sim:pw@broker:8884")
    with pytest.raises(ValueError, match="need an mqtts"):
        parse("mqtt://broker", ca_file="ca.pem")
    options = parse("mqtts://mosquitto:8884", username="simulator",
                    environ={"TAGWATCH_BROKER_PASSWORD": "b", "TAGWATCH_SIM_PASSWORD": "s"})
    assert (options.host, options.port, options.tls, options.password) == (
        "mosquitto", 8884, True, "s")
    assert parse("mqtts://mosquitto").port == 8883
    assert "password=" not in repr(options)  # never in a message or a log
