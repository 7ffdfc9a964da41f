"""The daemon's HTTP server under descriptor exhaustion, and the unit's descriptor limit
(issue 16, item 4)."""

from __future__ import annotations

import asyncio
import configparser
import socket
import subprocess
import sys
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tagwatch.ingest.embedded_broker import free_port

ROOT = Path(__file__).resolve().parent.parent

# A child process serves the feed's health route with tagwatch.daemon.http.serve under
# a soft limit of 64 descriptors. The parent holds 100 connections open, so accept()
# fails with EMFILE; the child waits (on a condition, with a deadline) until asyncio
# has retried the accept three times, then stops and says how often it was reported.
_CHILD = r"""
import asyncio, logging, resource, sys
import structlog
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from tagwatch.daemon import http

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def ok(request):
    return PlainTextResponse("ok")

async def main():
    app = Starlette(routes=[Route("/healthz", ok)])
    server, task = await http.serve(app, "127.0.0.1", int(sys.argv[1]))
    handler = asyncio.get_running_loop().get_exception_handler()
    print("listening", flush=True)
    deadline = asyncio.get_running_loop().time() + 60
    while handler.count < 3 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    print(f"reported {handler.count}", flush=True)
    server.should_exit = True
    await task

asyncio.run(main())
"""


def test_running_out_of_descriptors_neither_spins_nor_floods_the_log(tmp_path: Path):
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(port)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conns: list[socket.socket] = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "listening"
        for _ in range(100):
            conns.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        out, err = child.communicate(timeout=90)
    finally:
        for conn in conns:
            conn.close()
        child.kill()
    assert "reported" in out, err[-2000:]
    assert int(out.split("reported")[1].split()[0]) >= 3, err[-2000:]
    # Three pauses of accept(), one warning, no tracebacks.
    assert err.count("http_accept_paused") == 1, err[-3000:]
    assert "Traceback" not in err and "out of system resource" not in err, err[-3000:]


def test_the_systemd_unit_allows_more_descriptors_than_the_feed_takes_connections():
    from tagwatch.daemon.http import LIMIT_CONCURRENCY

    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((ROOT / "deploy" / "tagwatch.service").read_text())
    assert int(parser["Service"]["LimitNOFILE"]) >= 2 * LIMIT_CONCURRENCY


def test_a_client_that_never_finishes_its_headers_is_disconnected(monkeypatch):
    from tagwatch.daemon import http

    monkeypatch.setattr(http, "HEAD_TIMEOUT_S", 0.5)

    async def ok(request):
        return PlainTextResponse("ok")

    port, started, stop = free_port(), threading.Event(), threading.Event()

    async def run() -> None:
        server, task = await http.serve(Starlette(routes=[Route("/", ok)]), "127.0.0.1", port)
        started.set()
        await asyncio.to_thread(stop.wait, 60)
        server.should_exit = True
        await task

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            assert sock.recv(1024) == b""  # closed by the server, long before 10 s
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    finally:
        stop.set()
        thread.join(10)
