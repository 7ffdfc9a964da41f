"""The daemon's HTTP server: /healthz, /readyz, /metrics, and room for the feed's routes.

`build_app(daemon, routes)` makes the Starlette app; the operator feed (tagwatch/feed)
adds its routes through `routes`. `serve` runs it under uvicorn in the daemon's own
event loop, leaving the signal handlers to the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tagwatch.daemon.metrics import Metrics


class Observed(Protocol):
    metrics: Metrics

    def not_ready(self) -> list[str]: ...

    def refresh_metrics(self) -> None: ...


def build_app(daemon: Observed, routes: Sequence[BaseRoute] = ()) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        reasons = daemon.not_ready()
        if reasons:
            return JSONResponse({"ready": False, "reasons": reasons}, status_code=503)
        return JSONResponse({"ready": True})

    async def metrics(_: Request) -> Response:
        daemon.refresh_metrics()
        return Response(daemon.metrics.render(), media_type=daemon.metrics.content_type)

    own = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    return Starlette(routes=[*own, *routes])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns SIGTERM/SIGINT/SIGHUP: uvicorn must not take them over.
        yield


async def serve(app: Starlette, host: str, port: int) -> tuple[_Server, asyncio.Task]:
    """Start serving; returns once the socket listens (or raises if it cannot)."""
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                            lifespan="off", loop="none")
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
            raise OSError(f"HTTP server on {host}:{port} stopped before it started")
        await asyncio.sleep(0.01)
    return server, task
