"""A private Mosquitto for the benchmarks, on a free loopback port, stopped at the end.

Queue limits high enough that a subscriber falling behind a burst loses nothing
(`max_queued_messages 1000000`), Nagle off (it adds ~40 ms to small QoS 1
messages), persistence off (a benchmark keeps nothing).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tagwatch.ingest.embedded_broker import free_port

START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


class PrivateMosquitto:
    def __init__(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError(
                "no broker given and no mosquitto binary (PATH or /usr/sbin/mosquitto): "
                "install mosquitto or pass --broker mqtt://HOST:PORT"
            )
        self.binary = binary
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="tagwatch-bench-mosquitto-")
        self.conf = Path(self._tmp.name) / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        # Running as root, mosquitto would drop to user "mosquitto"; stay root instead.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 10000\n"
            "set_tcp_nodelay true\n"
            "log_dest none\n" + user
        )

    def __enter__(self) -> PrivateMosquitto:
        self._write_conf()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_accepting()
        return self

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto ({self.conf}) exited at start: {err.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto on port {self.port}: no TCP accept in 10 s")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._tmp.cleanup()
