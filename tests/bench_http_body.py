"""Resident memory of `tagwatch run` while 3 concurrent chunked POSTs of N MB each go to
/twilio/sms (issue 16, item 4). Not a test: `python tests/bench_http_body.py 300`.
The daemon runs without a broker (its HTTP server starts first) and is killed after."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagwatch.ingest.embedded_broker import free_port  # noqa: E402
from tests.daemon_harness import write_config  # noqa: E402

TWILIO = '[notify.twilio]\naccount_sid = "AC{sid}"\nfrom = "+447700900000"\npublic_url = "{url}"\n'


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(row for row in status if row.startswith("VmRSS"))
    return int(line.split()[1]) // 1024


def main(mb: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tw-body-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp / "t.toml", f"mqtt://127.0.0.1:{free_port()}",
                          f"sqlite:///{tmp}/r.db", "x/v1", port=port,
                          extra=TWILIO.format(sid="1" * 32, url=base))
    proc = subprocess.Popen([sys.executable, "-m", "tagwatch.cli", "run", "--config", str(config)],
                            env={**os.environ, "TWILIO_AUTH_TOKEN": "tok"}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        before = rss_mb(proc.pid)
        answers: list = []

        def post() -> None:
            chunk = b"a" * (1 << 20)
            try:
                sent = httpx.post(f"{base}/twilio/sms", content=(chunk for _ in range(mb)),
                                  timeout=120)
                answers.append(sent.status_code)
            except httpx.HTTPError as exc:
                answers.append(type(exc).__name__)

        threads = [threading.Thread(target=post) for _ in range(3)]
        for thread in threads:
            thread.start()
        peak = before
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(0.05)
        peak = max(peak, rss_mb(proc.pid))
        print(f"3 x {mb} MB: resident {before} MB before, {peak} MB at most; answers {answers}")
    finally:
        proc.kill()
        proc.wait(10)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
