"""Every HTTP input is bounded before it is read (issue 16, items 2 and 4), on a real
uvicorn serving the real feed app."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.test_feed_api import OP, VIEW, running_feed

MAX_NOTE_CHARS = 2_000  # tagwatch.feed.app.MAX_NOTE_CHARS
MAX_BODY_BYTES = 64 * 1024  # tagwatch.feed.limits.MAX_BODY_BYTES


def _raw(url: str, head: str, body: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send the request head and `body`, never the rest; return what the server answers
    before closing (or until timeout, which fails the caller's status assertion)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
        return answer


def _status(answer: bytes) -> int | None:
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 else None


def _ack_head(url: str, alert_id: str, extra: str) -> str:
    return (f"POST /api/alerts/{alert_id}/ack HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n"
            f"Authorization: {OP['Authorization']}\r\nContent-Type: application/json\r\n"
            f"{extra}\r\n")


def test_a_declared_oversized_body_is_refused_before_any_of_it_is_sent(tmp_path: Path):
    with running_feed(tmp_path) as feed:
        # Content-Length of 1 GB and not one byte of the body: the answer comes anyway.
        head = _ack_head(feed.url, "abc", f"Content-Length: {2**30}\r\n")
        assert _status(_raw(feed.url, head)) == 413


def test_a_chunked_body_is_refused_once_it_passes_the_limit(tmp_path: Path):
    with running_feed(tmp_path) as feed:
        head = _ack_head(feed.url, "abc", "Transfer-Encoding: chunked\r\n")
        # Just over the limit, and no final chunk: the server stops reading and answers.
        chunk = b"x" * 4096
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                        for _ in range(MAX_BODY_BYTES // len(chunk) + 1))
        assert _status(_raw(feed.url, head, body)) == 413


def test_a_body_that_never_ends_is_timed_out(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("tagwatch.feed.limits.READ_TIMEOUT_S", 0.5, raising=False)
    with running_feed(tmp_path) as feed:
        head = _ack_head(feed.url, "abc", "Content-Length: 100\r\n")
        started = time.monotonic()
        assert _status(_raw(feed.url, head, b"{", timeout=10)) == 408
        assert time.monotonic() - started < 10


def test_notes_are_bounded_and_odd_ack_bodies_are_400s(tmp_path: Path):
    with running_feed(tmp_path) as feed, httpx.Client(base_url=feed.url, timeout=10) as c:
        alert = feed.breach(time.time() - 60)
        url = f"/api/alerts/{alert['id']}/ack"
        too_long = c.post(url, json={"note": "n" * (MAX_NOTE_CHARS + 1)}, headers=OP)
        assert too_long.status_code == 400 and "at most 2000" in too_long.json()["error"]
        for body in ('{"note": {"a": [1]}}', "[" * 50_000, '{"note": ["x"]}', "7"):
            answer = c.post(url, content=body, headers=OP)
            assert answer.status_code == 400, (body[:20], answer.status_code)
        ok = c.post(url, json={"note": "n" * MAX_NOTE_CHARS}, headers=OP)
        assert ok.status_code == 200 and ok.json()["state"] == "acknowledged"


def test_api_answers_say_no_store_and_nosniff_errors_included(tmp_path: Path):
    with running_feed(tmp_path) as feed, httpx.Client(base_url=feed.url, timeout=10) as c:
        for answer in (c.get("/api/alerts", headers=VIEW), c.get("/api/alerts"),
                       c.get("/api/alerts/nope/deliveries", headers=VIEW)):
            assert answer.headers["cache-control"] == "no-store", answer.status_code
            assert answer.headers["x-content-type-options"] == "nosniff", answer.status_code
        # The 413 is answered before the body is read: sending the body with it raced the
        # server's close (a reset instead of the answer), so only the head goes.
        head = _ack_head(feed.url, "x", f"Content-Length: {MAX_BODY_BYTES + 1}\r\n")
        refused = _raw(feed.url, head).lower()
        assert _status(refused) == 413
        assert b"\r\ncache-control: no-store\r\n" in refused
        assert b"\r\nx-content-type-options: nosniff\r\n" in refused
