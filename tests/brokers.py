"""Real MQTT brokers for tests: a private Mosquitto, or the embedded amqtt broker.

A pytest plugin module: register it with ``pytest_plugins = ["tests.brokers"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tagwatch.ingest.embedded_broker import EmbeddedBroker, free_port
from tagwatch.ingest.mqtt import BrokerSettings

START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def broker_choice() -> str:
    """Which broker ``broker_url`` uses: "env", "mosquitto" or "embedded".

    TAGWATCH_TEST_BROKER=embedded forces the embedded broker even where Mosquitto exists.
    """
    wanted = os.environ.get("TAGWATCH_TEST_BROKER", "")
    if wanted == "embedded":
        return "embedded"
    if wanted:
        return "env"
    return "mosquitto" if mosquitto_binary() else "embedded"


def wait_for_port(host: str, port: int, timeout_s: float = START_TIMEOUT_S,
                  alive: Callable[[], bool] = lambda: True) -> None:
    """Wait until host:port accepts a TCP connection (polling a connect, with a deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if not alive():
            raise RuntimeError(f"broker on {host}:{port} exited before accepting connections")
        if time.monotonic() > deadline:
            raise TimeoutError(f"broker on {host}:{port}: no TCP accept within {timeout_s} s")
        time.sleep(0.05)


class Mosquitto:
    """A private Mosquitto on a free loopback port, persistent across stop/start and kill."""

    def __init__(self, workdir: Path, port: int = 0, extra_conf: str = "",
                 users: dict[str, str] | None = None) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto binary not found (PATH or /usr/sbin/mosquitto)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        user = "root" if os.geteuid() == 0 else ""  # else mosquitto drops to user "mosquitto"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + self._auth_conf(users)
            + "persistence true\n"
            f"persistence_location {workdir / 'data'}/\n"
            # Save every second (stop() saves everything). Saving on every change would make
            # Mosquitto slow enough to read one packet per loop turn, widening a race where a
            # session take-over discards the old connection's unread PUBACKs.
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 10000\n"
            # Without it Nagle and delayed ACKs add ~40 ms to every alert.
            "set_tcp_nodelay true\n"
            f"log_dest file {self.log}\n"
            "log_type all\n"
            + (f"user {user}\n" if user else "")
            + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _auth_conf(self, users: dict[str, str] | None) -> str:
        if not users:
            return "allow_anonymous true\n"
        passwd = self.workdir / "passwd"
        for i, (name, password) in enumerate(users.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), name, password],
                           check=True, capture_output=True)
        return f"allow_anonymous false\npassword_file {passwd}\n"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def settings(self, **kwargs: object) -> BrokerSettings:
        return BrokerSettings.from_url(self.url, **kwargs)  # type: ignore[arg-type]

    def start(self) -> Mosquitto:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=(self.workdir / "stderr.txt").open("ab"),
        )
        proc = self.proc
        wait_for_port("127.0.0.1", self.port, alive=lambda: proc.poll() is None)
        return self

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class EmbeddedInThread:
    """The embedded amqtt broker on its own event loop in a thread, so it outlives tests."""

    def __init__(self) -> None:
        self.broker = EmbeddedBroker()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-mqtt", daemon=True)

    @property
    def url(self) -> str:
        return self.broker.url

    def start(self) -> EmbeddedInThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error:
            raise RuntimeError(f"embedded broker did not start: {self._error}")
        return self

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with self.broker:
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


@dataclass(frozen=True)
class BrokerUnderTest:
    url: str
    kind: str  # "env", "mosquitto" or "embedded"

    @property
    def speaks_mqtt5(self) -> bool:
        return self.kind != "embedded"

    def settings(self, client_id: str, **kwargs: object) -> BrokerSettings:
        return BrokerSettings.from_url(self.url, client_id=client_id, **kwargs)  # type: ignore[arg-type]


def unique_prefix() -> str:
    """A topic prefix no other test shares, so tests on one broker never see each other."""
    return f"test/{uuid.uuid4().hex[:12]}/tagwatch/v1"


def unique_client_id(name: str = "tw") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def pytest_report_header(config: pytest.Config) -> str:
    choice = broker_choice()
    where = {
        "env": f"TAGWATCH_TEST_BROKER={os.environ.get('TAGWATCH_TEST_BROKER')}",
        "mosquitto": f"private Mosquitto ({mosquitto_binary()})",
        "embedded": "embedded amqtt broker (no mosquitto found)",
    }[choice]
    return f"tagwatch MQTT tests use: {where}"


@pytest.fixture(scope="session")
def mqtt_test_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerUnderTest]:
    choice = broker_choice()
    if choice == "env":
        yield BrokerUnderTest(os.environ["TAGWATCH_TEST_BROKER"], "env")
    elif choice == "mosquitto":
        mosq = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
        try:
            yield BrokerUnderTest(mosq.url, "mosquitto")
        finally:
            mosq.stop()
    else:
        embedded = EmbeddedInThread().start()
        try:
            yield BrokerUnderTest(embedded.url, "embedded")
        finally:
            embedded.stop()


@pytest.fixture
def broker_url(mqtt_test_broker: BrokerUnderTest, request: pytest.FixtureRequest) -> str:
    kind, url = mqtt_test_broker.kind, mqtt_test_broker.url
    request.node.user_properties.append(("mqtt_broker", f"{kind} {url}"))
    return mqtt_test_broker.url


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """``mosquitto_factory(extra_conf="", users=None)`` starts a private Mosquitto.

    ``users`` ({name: password}) turns anonymous access off. All are killed at teardown.
    """
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed")
    started: list[Mosquitto] = []

    def make(extra_conf: str = "", users: dict[str, str] | None = None) -> Mosquitto:
        mosq = Mosquitto(tmp_path / f"mosquitto-{len(started)}", extra_conf=extra_conf,
                         users=users)
        started.append(mosq)
        return mosq.start()

    yield make
    for mosq in started:
        mosq.kill()


@pytest.fixture
def topic_prefix() -> str:
    return unique_prefix()
