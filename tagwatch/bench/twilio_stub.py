"""A local HTTP server that answers Twilio's Messages and Calls API, for the benchmarks.

POST /2010-04-01/Accounts/{sid}/Messages.json or Calls.json, form-encoded, basic auth
checked, answered 201 with a Twilio-shaped JSON body. Each request is kept with its
form and its arrival time (time.perf_counter()), so a benchmark can time fix to SMS.
(The test suite has a scriptable version in tests/twilio_server.py; benchmarks ship in
the package and tests do not.)
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

_API = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/(?P<kind>Messages|Calls)\.json$")


@dataclass(frozen=True)
class Request:
    path: str
    form: dict[str, str]
    at: float  # time.perf_counter() on arrival


class TwilioStub:
    def __init__(self, account_sid: str, auth_token: str) -> None:
        self.sid = account_sid
        self.auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.requests: list[Request] = []
        self.cond = threading.Condition()
        self._ids = itertools.count(1)
        handler = type("Handler", (_Handler,), {"stub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> TwilioStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, n: int, timeout: float) -> list[Request]:
        """At least n Messages requests, or as many as came within timeout."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.requests) >= n, timeout)
            return list(self.requests)

    def keep(self, request: Request) -> None:
        with self.cond:
            self.requests.append(request)
            self.cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    stub: TwilioStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        at = time.perf_counter()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        api = _API.match(self.path)
        if not api or api["sid"] != self.stub.sid:
            return self._json(404, {"code": 20404, "message": f"no such path {self.path}"})
        if self.headers.get("Authorization") != self.stub.auth:
            return self._json(401, {"code": 20003, "message": "Authenticate", "status": 401})
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        if api["kind"] == "Messages":
            self.stub.keep(Request(self.path, form, at))
        prefix = "SM" if api["kind"] == "Messages" else "CA"
        sid = f"{prefix}{next(self.stub._ids):032x}"
        self._json(
            201,
            {
                "sid": sid,
                "account_sid": self.stub.sid,
                "to": form.get("To"),
                "from": form.get("From"),
                "body": form.get("Body"),
                "status": "queued",
            },
        )

    def _json(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up
