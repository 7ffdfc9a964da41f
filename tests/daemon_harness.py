"""Helpers for the daemon tests: `tagwatch run` as a subprocess, and MQTT clients.

The daemon runs with a config file in tmp_path, a record in tmp_path (SQLite) or in a
per-test PostgreSQL schema, a topic prefix and a client id of its own, the feed on a
free port. Readiness is awaited on the retained status topic or on /readyz, with a
deadline; nothing sleeps to wait.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tagwatch.ingest.embedded_broker import free_port
from tests.brokers import unique_client_id, unique_prefix
from tests.record_db import RecordDb, record_database

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CASES = ROOT / "config" / "cases"
HOME = (-0.1275, 51.5073)  # inside C-0001's home zone (lon, lat)


# ------------------------------------------------------------------ the record


@pytest.fixture(params=["sqlite", "postgresql"])
def record_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordDb]:
    with record_database(request.param, tmp_path) as db:
        yield db


# ------------------------------------------------------------------ the daemon


def write_config(path: Path, broker_url: str, record_url: str, prefix: str, *,
                 cases: Path = EXAMPLE_CASES, extra: str = "", tick_s: float = 0.2,
                 client_id: str | None = None, port: int | None = None) -> Path:
    port = port or free_port()
    path.write_text(
        f'[broker]\nurl = "{broker_url}"\nclient_id = "{client_id or unique_client_id("twd")}"\n'
        f'topic_prefix = "{prefix}"\n\n'
        f'[cases]\npath = "{cases}"\n\n'
        f'[record]\nurl = "{record_url}"\n\n'
        f"[ingest]\nbatch_max = 200\nbatch_wait_ms = 10\ntick_s = {tick_s}\n\n"
        f'[feed]\nlisten = "127.0.0.1:{port}"\n\n'
        f'[log]\nlevel = "info"\njson = true\n\n' + extra
    )
    return path


@dataclass
class Daemon:
    config: Path
    prefix: str
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Daemon:
        env = {**os.environ, **self.env}
        env.pop("TAGWATCH_CONFIG", None)
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tagwatch.cli", "run", "--config", str(self.config)],
                stdout=logf, stderr=logf, env=env, cwd=ROOT)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /readyz until 200, with a deadline; fail early if the process died."""
        deadline = time.monotonic() + timeout
        retries = 3
        with httpx.Client(timeout=1.0) as client:
            while True:
                if retries and self._port_taken():
                    retries -= 1
                    self._move_port()
                assert self.proc is not None and self.proc.poll() is None, self.logs()[-3000:]
                try:
                    if client.get(f"{self.base}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"daemon not ready in {timeout} s:\n{self.logs()[-3000:]}")
                time.sleep(0.05)

    def _port_taken(self) -> bool:
        """The daemon died because its feed port was taken between free_port() and its
        bind (another process, or an outgoing connection's ephemeral port, got it)."""
        return (self.proc is not None and self.proc.poll() is not None
                and f"listen 127.0.0.1:{self.port}: cannot listen there" in self.logs())

    def _move_port(self) -> None:
        """Start again on another free port (the config's feed listen line rewritten)."""
        port = free_port()
        text = self.config.read_text()
        # only the listen line: the process that took the port may be in the config too
        old, new = f'listen = "127.0.0.1:{self.port}"', f'listen = "127.0.0.1:{port}"'
        assert old in text, f"{self.config}: no feed listen line on port {self.port}"
        self.config.write_text(text.replace(old, new))
        self.port = port
        self.start()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", timeout=5.0)

    def metrics(self) -> str:
        return self.get("/metrics").text

    def metric(self, sample: str, **labels: str) -> float:
        """Sum of the samples named `sample` whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        return sum(s.value for fam in text_string_to_metric_families(self.metrics())
                   for s in fam.samples
                   if s.name == sample and labels.items() <= s.labels.items())

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        env = {k: v for k, v in {**os.environ, **self.env}.items() if k != "TAGWATCH_CONFIG"}
        return subprocess.run([sys.executable, "-m", "tagwatch.cli", *args,
                               "--config", str(self.config)],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def make_daemon(tmp_path: Path, broker_url: str, record_url: str, *, name: str = "d",
                cases: Path = EXAMPLE_CASES, extra: str = "", env: dict | None = None,
                tick_s: float = 0.2, port: int | None = None) -> Daemon:
    prefix = unique_prefix()
    port = port or free_port()
    config = write_config(tmp_path / f"{name}.toml", broker_url, record_url, prefix,
                          cases=cases, extra=extra, tick_s=tick_s, port=port)
    return Daemon(config, prefix, port, tmp_path / f"{name}.log", env or {})


# ------------------------------------------------------------------ MQTT clients


def _client(url: str, name: str, clean: bool = True) -> paho.Client:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=unique_client_id(name),
                         protocol=paho.MQTTv311, clean_session=clean)
    client.reconnect_delay_set(0.1, 1)
    client.connect(host, int(port), 30)
    return client


class Collector:
    """Subscribes to topic filters and keeps every message (topic, payload, retained)."""

    def __init__(self, url: str, *filters: str, persistent: bool = False) -> None:
        """persistent: a kept session (clean session off), which a broker restart keeps."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = _client(url, "collector", clean=not persistent)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in filters])
        if not self._subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for {filters}")

    def _on_message(self, _c, _u, m: paho.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool],
                 timeout: float = 15.0, what: str = "") -> list[tuple[str, bytes, bool]]:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.messages), timeout):
                raise TimeoutError(f"{what or 'condition'} not met in {timeout} s; "
                                   f"{len(self.messages)} message(s) seen")
            return list(self.messages)

    def json_on(self, topic_part: str) -> list[dict]:
        with self.cond:
            return [json.loads(p) for t, p, _ in self.messages if topic_part in t]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_status(url: str, prefix: str, state: str, timeout: float = 20.0) -> dict:
    """The retained status, once it says `state`."""
    col = Collector(url, f"{prefix}/status")
    try:
        msgs = col.wait_for(lambda ms: any(json.loads(p)["state"] == state for _, p, _ in ms),
                            timeout, f"status {state}")
        return next(json.loads(p) for _, p, _ in reversed(msgs) if json.loads(p)["state"] == state)
    finally:
        col.close()


class Publisher:
    def __init__(self, url: str) -> None:
        self.client = _client(url, "pub")
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str | dict | list, timeout: float = 10.0) -> None:
        if isinstance(payload, dict | list):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


BREACH_GAP_S = 30.0  # fixes this far apart are independent evidence (engine/evidence.py)


def breach_fixes(tag: str = "T-1001", t0: float | None = None, n: int = 2) -> list[dict]:
    """n fixes deep inside C-0001's home, BREACH_GAP_S apart from t0 (default: the last
    one 5 s ago): the first opens a probable breach, the second confirms it."""
    t0 = time.time() - 5 - BREACH_GAP_S * (n - 1) if t0 is None else t0
    return [{"tag": tag, "ts": t0 + BREACH_GAP_S * i, "lat": HOME[1], "lon": HOME[0],
             "acc": 5.0} for i in range(n)]


def alerts_of(col: Collector, prefix: str, case: str = "C-0001") -> list[dict]:
    return col.json_on(f"{prefix}/alerts/{case}")
