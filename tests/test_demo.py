"""`tagwatch demo` as a new user runs it: alerts are printed, Ctrl-C stops it cleanly, a
closed terminal (SIGHUP) too; the story starts at once; acks print in scenario time; fixes
come in over MQTT, from an OwnTracks phone and through Traccar's forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tagwatch.ingest.embedded_broker import free_port

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
        # read while it stops: a demo blocked writing to a full pipe never stops
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        rest = out.decode(errors="replace") if out else ""
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


def _start_demo(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGWATCH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tagwatch.cli", "demo", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )


def _demo_processes(workdir: str) -> list[int]:
    """Processes whose command line names this demo's own temporary folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if workdir in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# A child that, told to stop, says goodbye to a server on the demo's event loop and
# exits 0 only once answered: as the daemon's last publishes wait for the demo's
# embedded broker.
_NEEDS_THE_LOOP = """
import signal, socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def stop(*_):
    sock.sendall(b"bye")
    sys.exit(0 if sock.recv(3) == b"bye" else 3)
signal.signal(signal.SIGTERM, stop)
sock.sendall(b"up!")
signal.pause()
"""


def test_stopping_the_demos_daemon_leaves_the_loop_free_for_its_last_words() -> None:
    """Ctrl-C once took 15-30 s: the demo waited for its daemon with the loop blocked,
    so the embedded broker on that loop could not answer the daemon's last publishes and
    the daemon sat out its timeouts (then was killed)."""
    from tagwatch import demo

    async def scenario() -> int:
        up = asyncio.Event()

        async def echo(reader, writer):
            await reader.readexactly(3)
            up.set()
            writer.write(await reader.readexactly(3))
            await writer.drain()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        child = subprocess.Popen([sys.executable, "-c", _NEEDS_THE_LOOP, str(port)])
        await asyncio.wait_for(up.wait(), 30)
        await demo._stop_daemon(child)
        server.close()
        return child.returncode

    assert asyncio.run(scenario()) == 0  # not -9: answered, not killed after 20 s


def test_stopping_the_play_asks_again_when_a_cancellation_is_dropped() -> None:
    """Python 3.11's asyncio.wait_for (in aiomqtt's publish) can drop a cancellation; the
    scenario then played on for half a minute after Ctrl-C."""
    from tagwatch import demo

    async def drops_one_cancellation() -> None:
        # as wait_for does when its future completes at the same moment
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    async def scenario() -> bool:
        task = asyncio.create_task(drops_one_cancellation())
        await asyncio.sleep(0)
        stopping = asyncio.create_task(demo._cancel(task))
        await asyncio.wait({stopping}, timeout=30)  # (wait_for would cancel it again)
        return stopping.done() and task.cancelled()

    assert asyncio.run(scenario())


def test_demo_on_sighup_stops_its_daemon_and_removes_its_folder() -> None:
    port = free_port()
    proc = _start_demo("--port", str(port))
    lines: list[str] = []
    workdir = ""
    try:
        where = _read_until(proc, lines, lambda line: "removed at exit" in line, timeout=90)
        assert where is not None, "".join(lines)
        workdir = where.split(" log in ", 1)[1].split(" (removed", 1)[0]
        assert Path(workdir).is_dir() and _demo_processes(workdir)
        proc.send_signal(signal.SIGHUP)  # the terminal was closed
        proc.wait(timeout=60)
        assert not Path(workdir).exists()
        assert not _demo_processes(workdir)  # its daemon is gone
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing holds the port
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _demo_processes(workdir) if workdir else []:
            os.kill(pid, signal.SIGKILL)  # the old code left its daemon behind
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


_REL = re.compile(r"^\s*([+-]\d+)s (\S+) (\S+)\s+\S+\s+(\S+)")


def test_demo_story_starts_at_once_and_acks_print_in_scenario_time() -> None:
    """At the default speed: the first alert within 15 s and the first breach within 75 s
    of the start of play, counted from the scenario times printed (the demo's pacing
    gives each scenario time its wall time); an operator's ack is printed in scenario
    time, after the breach it acknowledges."""
    from simulators.runner import Pacing
    from simulators.scenario import load_scenario
    from tagwatch import demo

    proc = _start_demo()
    lines: list[str] = []
    try:
        def breach(line: str) -> bool:
            return " OPEN " in line and "zone.breach" in line and "T-1001 work" in line

        found = _read_until(proc, lines, breach, timeout=180)
        assert found is not None, "no breach printed:\n" + "".join(lines)
        assert any("quiet stretches at 2400x" in line for line in lines), "".join(lines)
        alerts = [m for line in lines if (m := _REL.match(line))]
        pacing = Pacing(load_scenario(demo.SCENARIO), 120.0, quiet=demo.QUIET)
        first, breach_s = int(alerts[0].group(1)), int(_REL.match(found).group(1))
        assert pacing.wall_s(first) <= 15.0, alerts[0].group(0)
        assert pacing.wall_s(breach_s) <= 75.0, found

        line = next(x for x in lines if "dashboard: http://" in x)
        base, token = line.split("dashboard: ", 1)[1].split("  token: ")
        auth = {"Authorization": f"Bearer {token.strip()}"}
        listed = httpx.get(f"{base.rstrip('/')}/api/alerts?state=open", headers=auth,
                           timeout=10).json()
        target = next(a for a in listed if a["type"] == "zone.breach")
        answer = httpx.post(f"{base.rstrip('/')}/api/alerts/{target['id']}/ack",
                            headers=auth, json={"note": "test"}, timeout=10)
        assert answer.status_code == 200, answer.text
        acked = _read_until(proc, lines, lambda x: " ACKNOWLEDGED " in x, timeout=60)
        assert acked is not None, "".join(lines[-20:])
        m = _REL.match(acked)
        assert m is not None and m.group(2).startswith("2026-11-02T"), acked
        assert breach_s <= int(m.group(1)) <= load_scenario(demo.SCENARIO).duration_s, acked
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """A failed test still stops the demo the way that cleans up (its daemon, its folder)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_demo_takes_a_victims_owntracks_phone_and_a_tag_through_traccar() -> None:
    """Case C-0002 of the demo: the victim's phone is the OwnTracks app and the tag T-2002
    a tracker whose positions the simulated Traccar server POSTs to /ingest/traccar (no
    other way carries either). So a proximity of T-2002 to V-02 needs fixes from both
    paths, and its confirmed breach of her home the Traccar ones; the cases view shows
    her phone as an OwnTracks device with a position, and the record holds T-2002's
    fixes. C-0001's breach (over MQTT) is still printed after them."""
    proc = _start_demo()
    lines: list[str] = []
    try:
        def c0001_breach(line: str) -> bool:
            return " OPEN " in line and "zone.breach" in line and "C-0001/T-1001 work" in line

        found = _read_until(proc, lines, c0001_breach, timeout=180)
        assert found is not None, "no C-0001 breach printed:\n" + "".join(lines)
        story = "".join(lines)
        assert re.search(r" OPEN +critical +proximity +C-0002/T-2002 victim V-02 ", story), story
        assert re.search(r" UPDATED +critical +zone\.breach +C-0002/T-2002 home .*\(confirmed\)",
                         story), story

        line = next(x for x in lines if "dashboard: http://" in x)
        base, token = line.split("dashboard: ", 1)[1].split("  token: ")
        auth = {"Authorization": f"Bearer {token.strip()}"}
        cases = httpx.get(f"{base.rstrip('/')}/api/cases", headers=auth, timeout=10).json()
        c2 = next(c for c in cases if c["case"] == "C-0002")
        [victim] = c2["victims"]
        assert victim["device"] == "owntracks" and victim["device_age_s"] is not None, c2
        [tag] = c2["tags"]
        assert tag["tag"] == "T-2002" and tag["last_fix_age_s"] is not None, c2

        where = next(x for x in lines if "removed at exit" in x)
        workdir = where.split(" log in ", 1)[1].split(" (removed", 1)[0]
        with sqlite3.connect(f"file:{workdir}/record.db?mode=ro", uri=True) as con:
            [(fixes,)] = con.execute("SELECT count(*) FROM entries WHERE kind = 'fix' "
                                     "AND tag = 'T-2002'").fetchall()
        assert fixes > 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        _stop(proc)
