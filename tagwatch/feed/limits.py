"""Bounds on every HTTP request before the app sees it (DESIGN 5: every input bounded).

`BodyLimit` is an ASGI middleware around the whole feed app (the dashboard API, the
Twilio webhooks, health): it reads a request's body itself, at most `max_bytes` of it
and within `read_timeout_s`, before the app is called, and answers
- 413 when the declared Content-Length, or the bytes received so far of a chunked body,
  go beyond the limit: the rest is never read, so a 1 GB POST costs at most the limit;
- 408 when the body does not arrive in time (a client trickling bytes holds no
  worker for long).
The app then gets the body it read, in one message, and the original `receive` for
everything after it (disconnects, which the event stream waits on).

`SecurityHeaders` adds `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`
to every /api response, errors included (they may carry alert data).
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024  # Twilio's callbacks and an operator's note are far smaller
READ_TIMEOUT_S = 10.0
_NO_STORE = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]


class BodyLimit:
    def __init__(
        self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, read_timeout_s: float | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._read_timeout_s = read_timeout_s

    @property
    def read_timeout_s(self) -> float:
        return READ_TIMEOUT_S if self._read_timeout_s is None else self._read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, 413, f"body of {declared} bytes; at most {self.max_bytes}")
            return
        try:
            first = await asyncio.wait_for(self._read(receive), self.read_timeout_s)
        except TimeoutError:
            await _refuse(send, 408, f"body not received within {self.read_timeout_s:g} s")
            return
        if first is None:
            await _refuse(send, 413, f"body larger than {self.max_bytes} bytes")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> Message | None:
        """The whole body as one message, or None once it goes beyond the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # a disconnect: let the app see it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


class SecurityHeaders:
    def __init__(self, app: ASGIApp, prefix: str = "/api") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (
            path == self.prefix or path.startswith(self.prefix + "/")
        ):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"cache-control", b"x-content-type-options")
                ]
                headers += _NO_STORE
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *_NO_STORE,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
