"""A local HTTP server speaking enough of Twilio's REST API for tests (not collected).

POST /2010-04-01/Accounts/{sid}/Messages.json and /Calls.json, form-encoded, basic
auth checked, JSON answers shaped like Twilio's. Any other POST path (a webhook
receiver, say) is recorded too and answered 200 by default. Each request takes the
next scripted answer, else the default:

    server.script(Answer(429, retry_after=1), Answer(500), Answer.hang(), Answer(201))

An outage answers every API request with one answer (500 by default) for a while,
after the scripted answers are used up:

    server.outage(120.0, Answer(500))

Every request is recorded (path, form, headers, body, monotonic arrival time) and
tests wait for the Nth with `wait_for(n, timeout)`.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

_API = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/(?P<kind>Messages|Calls)\.json$")


@dataclass(frozen=True)
class Answer:
    status: int = 201
    retry_after: float | None = None
    hang_s: float = 0.0  # hold the request this long (or until release())
    body: dict | None = None

    @classmethod
    def hang(cls, seconds: float = 5.0) -> Answer:
        return cls(status=201, hang_s=seconds)


@dataclass
class Seen:
    path: str
    form: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival
    answered: int = 0


@dataclass
class _State:
    sid: str
    token: str
    answers: list[Answer] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    release: threading.Event = field(default_factory=threading.Event)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    outage_until: float = 0.0  # time.monotonic() the outage ends
    outage_answer: Answer = field(default_factory=lambda: Answer(500))


class TwilioServer:
    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "tok") -> None:
        self.state = _State(account_sid, auth_token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> TwilioServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def script(self, *answers: Answer) -> None:
        with self.state.cond:
            self.state.answers.extend(answers)

    def outage(self, seconds: float, answer: Answer = Answer(500)) -> float:
        """Answer API requests with `answer` for `seconds` from now (scripted answers
        first); returns the time.monotonic() at which the outage ends."""
        with self.state.cond:
            self.state.outage_until = time.monotonic() + seconds
            self.state.outage_answer = answer
            return self.state.outage_until

    def release(self) -> None:
        """Let every hung request answer now."""
        self.state.release.set()

    @property
    def seen(self) -> list[Seen]:
        with self.state.cond:
            return list(self.state.seen)

    def wait_for(self, n: int, timeout: float = 10.0, path: str = "") -> list[Seen]:
        """Block until at least n requests (whose path contains `path`) arrived."""
        def matching() -> list[Seen]:
            return [s for s in self.state.seen if path in s.path]
        with self.state.cond:
            if not self.state.cond.wait_for(lambda: len(matching()) >= n, timeout):
                raise TimeoutError(f"{len(matching())} of {n} requests to {path!r} "
                                   f"arrived in {timeout} s")
            return matching()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client killed mid-request (kill -9 tests) resets its connection."""


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen = Seen(self.path, dict(parse_qsl(body.decode("utf-8", "replace"))),
                    {k: v for k, v in self.headers.items()}, body, time.monotonic())
        with self.state.cond:
            answer = self.state.answers.pop(0) if self.state.answers else None
            self.state.seen.append(seen)
            self.state.cond.notify_all()
        api = _API.match(self.path)
        if api and not self._authorised(api["sid"]):
            return self._json(401, {"code": 20003, "message": "Authenticate", "status": 401})
        if answer is None and api and seen.at < self.state.outage_until:
            answer = self.state.outage_answer
        answer = answer or Answer(201 if api else 200)
        if answer.hang_s:
            self.state.release.wait(answer.hang_s)
        seen.answered = answer.status
        if not api:
            return self._json(answer.status, answer.body or {})
        self._json(answer.status, answer.body or self._twilio_body(api, seen, answer),
                   answer.retry_after)

    def _authorised(self, sid: str) -> bool:
        expected = base64.b64encode(f"{self.state.sid}:{self.state.token}".encode()).decode()
        return sid == self.state.sid and self.headers.get("Authorization") == f"Basic {expected}"

    def _twilio_body(self, api: re.Match, seen: Seen, answer: Answer) -> dict:
        if answer.status >= 400:
            code = {400: 21211, 429: 20429, 500: 20500}.get(answer.status, 20001)
            return {"code": code, "message": f"scripted {answer.status}",
                    "more_info": f"https://www.twilio.com/docs/errors/{code}",
                    "status": answer.status}
        n = next(self.state.counter)
        prefix = "SM" if api["kind"] == "Messages" else "CA"
        return {"sid": f"{prefix}{n:032x}", "account_sid": self.state.sid,
                "to": seen.form.get("To"), "from": seen.form.get("From"),
                "body": seen.form.get("Body"), "status": "queued",
                "uri": f"/2010-04-01/Accounts/{self.state.sid}/{api['kind']}/{prefix}{n}.json"}

    def _json(self, status: int, doc: dict, retry_after: float | None = None) -> None:
        data = json.dumps(doc).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry_after is not None:
                self.send_header("Retry-After", f"{retry_after:g}")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a hung request after its timeout)
