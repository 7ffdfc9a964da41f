"""The test harness itself: a daemon whose feed port another process took between
free_port() and its bind starts again on another port (seen in CI: 'address already in
use' under xdist, where outgoing connections' ephemeral ports share the range)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.daemon_harness import make_daemon


def test_a_daemon_whose_feed_port_was_taken_starts_again_on_another(
        tmp_path: Path, broker_url: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path / 'record.db'}", port=port)
        d.start()
        try:
            d.wait_ready()
            assert d.port != port
            assert f"listen 127.0.0.1:{port}: cannot listen there" in d.logs()
            assert d.get("/readyz").status_code == 200
        finally:
            d.kill()
