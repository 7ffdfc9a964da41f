"""The daemon's HTTP server: the operator feed app (tagwatch/feed, with /healthz,
/readyz and /metrics) under uvicorn in the daemon's own event loop, leaving the signal
handlers to the daemon. Request lines are not logged: the event stream may carry a
token in its query string.

Bounds (DESIGN 5): at most `limit_concurrency` connections and requests at once (more
are answered 503 by uvicorn, without running the app), idle keep-alive connections
closed after `KEEP_ALIVE_S`, a request's line and headers due within `HEAD_TIMEOUT_S`
(else the connection is closed), request bodies bounded and timed by the feed's
BodyLimit.
When the process runs out of file descriptors, asyncio's accept loop stops accepting
for a second and tries again (it does not spin); the loop's report of it, an error
with a traceback every second, is replaced by one warning a minute and a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("tagwatch.daemon.http")

LIMIT_CONCURRENCY = 1000
KEEP_ALIVE_S = 5
HEAD_TIMEOUT_S = 10.0  # a request line and headers must arrive within this
_ACCEPT_MESSAGE = "socket.accept() out of system resource"
_ACCEPT_LOG_EVERY_S = 60.0


class _H11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's line and headers: a client
    that connects and trickles (or never sends) them is disconnected after
    HEAD_TIMEOUT_S, so idle or slow connections cannot use up limit_concurrency."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def handle_events(self) -> None:
        super().handle_events()
        waiting = self.cycle is None or self.cycle.response_complete
        if not waiting and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        elif waiting and self._head_timer is None and self.timeout_keep_alive_task is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not (
            self.transport.is_closing()
        ):
            self.transport.close()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns SIGTERM/SIGINT/SIGHUP: uvicorn must not take them over.
        yield

    async def startup(self, sockets=None) -> None:
        # uvicorn exits the process (status 3) when it cannot listen; an OSError instead
        # lets the daemon stop cleanly with status 1 and a message (DESIGN 3.5).
        try:
            await super().startup(sockets=sockets)
        except SystemExit:
            where = f"{self.config.host}:{self.config.port}"
            raise OSError(f"[feed] listen {where}: cannot listen there (see the log)") from None


class AcceptErrors:
    """A loop exception handler: accept() failing for want of descriptors is counted
    and logged at most once per `every_s`; everything else goes to the previous one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, every_s: float = _ACCEPT_LOG_EVERY_S):
        self.count = 0
        self._every_s = every_s
        self._logged_at: float | None = None
        self._previous = loop.get_exception_handler()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_MESSAGE:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.count += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self._every_s:
            self._logged_at = now
            exc = context.get("exception")
            log.warning(
                "http_accept_paused",
                error=type(exc).__name__ if exc else None,
                errno=getattr(exc, "errno", None),
                times=self.count,
                detail="out of file descriptors or memory: not accepting for a second",
            )


async def serve(
    app: Starlette, host: str, port: int, limit_concurrency: int = LIMIT_CONCURRENCY
) -> tuple[_Server, asyncio.Task]:
    """Start serving; returns once the socket listens (or raises if it cannot)."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrors(loop))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        loop="none",
        http=_H11,
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=16 * 1024,  # request line and headers
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
            raise OSError(f"HTTP server on {host}:{port} stopped before it started")
        await asyncio.sleep(0.01)
    return server, task
