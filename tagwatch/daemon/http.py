"""The daemon's HTTP server: the operator feed app (tagwatch/feed, with /healthz,
/readyz and /metrics) under uvicorn in the daemon's own event loop, leaving the signal
handlers to the daemon. Request lines are not logged: the event stream may carry a
token in its query string.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette


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


async def serve(app: Starlette, host: str, port: int) -> tuple[_Server, asyncio.Task]:
    """Start serving; returns once the socket listens (or raises if it cannot)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off", loop="none"
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
            raise OSError(f"HTTP server on {host}:{port} stopped before it started")
        await asyncio.sleep(0.01)
    return server, task
