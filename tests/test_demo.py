"""`tagwatch demo` as a new user runs it: alerts are printed, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

from .conftest import ROOT


def test_demo_prints_alerts_and_stops_on_ctrl_c() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGWATCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagwatch.cli", "demo", "--speed", "1500"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    lines: list[str] = []
    try:
        alert = _read_until(proc, lines, lambda line: " OPEN " in line, timeout=90)
        assert alert is not None, "no alert printed within 90 s:\n" + "".join(lines)
        assert any("dashboard: http://127.0.0.1:" in line for line in lines)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        rest = proc.stdout.read().decode() if proc.stdout else ""
        assert "stopped" in rest or any("stopped" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()


def _read_until(proc, lines, predicate, timeout: float) -> str | None:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace") + "\n"
            lines.append(line)
            if predicate(line):
                return line
    return None
