"""SIGHUP reloads the cases (the good files swapped in, a refused file keeps its old case);
SIGTERM drains and exits 0, offline published; a refused case file at start is named (log,
metric, /readyz) and the others run; with no good file the daemon is up and not ready."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon_harness import (
    EXAMPLE_CASES,
    ROOT,
    Collector,
    Publisher,
    breach_fixes,
    make_daemon,
    wait_status,
)

C2_INSIDE = (-0.0590, 51.5403)  # in C-0002's home zone, outside its hole


def _wait_log(d, text: str, after: int = 0, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in d.logs()[after:]:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{d.logs()[-2000:]}"
        time.sleep(0.05)  # polling the log file, with a deadline


# A new version of C-0001 that is refused (unknown timezone), carrying a phone number
# that must not reach the logs or /readyz.
BAD_C1 = ('{"type": "FeatureCollection", "case": {"id": "C-0001", "tags": ["T-1001"], '
          '"timezone": "Nowhere/Else", "victims": [{"id": "V-01", "phone": "+447700900999"}]}, '
          '"features": []}')


def test_sighup_swaps_the_good_files_keeps_a_bad_files_old_case_then_sigterm_drains(
        tmp_path: Path, broker_url: str) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(EXAMPLE_CASES / "C-0001.geojson", cases)
    d = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db", cases=cases)
    col = Collector(broker_url, f"{d.prefix}/alerts/#", f"{d.prefix}/rejected/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        assert d.metric("tagwatch_cases_refused") == 0
        shutil.copy(EXAMPLE_CASES / "C-0002.geojson", cases)  # new and good: swapped in
        (cases / "C-0001.geojson").write_text(BAD_C1)  # bad: C-0001 keeps its old version
        (cases / "C-0003.geojson").write_text('{"type": "FeatureCollection", "case": ')
        mark = len(d.logs())
        d.signal(signal.SIGHUP)
        _wait_log(d, '"event": "reloaded"', mark)
        logs = d.logs()[mark:]
        assert '"event": "case_kept"' in logs and "C-0003.geojson" in logs
        assert "+447700900999" not in d.logs()

        ready = d.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["cases_refused"] == [str(cases / "C-0001.geojson"),
                                                 str(cases / "C-0003.geojson")]
        assert "+447700900999" not in ready.text and "Nowhere" not in ready.text
        assert d.metric("tagwatch_cases_refused") == 2
        assert d.metric("tagwatch_cases_loaded") == 2

        now = time.time()
        c2 = {"ts": now - 5, "lat": C2_INSIDE[1], "lon": C2_INSIDE[0], "acc": 5.0}
        for i in range(2):
            pub.send(f"{d.prefix}/tags/T-2002/fix", {**c2, "ts": now - 5 + i})
        col.wait_for(lambda ms: any("/alerts/C-0002" in t for t, _, _ in ms), 15, "C-0002")
        for fix in breach_fixes(t0=now - 2):
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        col.wait_for(lambda ms: any("/alerts/C-0001" in t for t, _, _ in ms), 15, "C-0001")
        assert not col.json_on("/rejected/")

        for file in cases.iterdir():  # a reload that would leave no case is refused whole
            file.unlink()
        mark = len(d.logs())
        d.signal(signal.SIGHUP)
        _wait_log(d, "reload_refused", mark)
        assert d.get("/readyz").status_code == 200

        d.signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0
        assert wait_status(broker_url, d.prefix, "offline")["state"] == "offline"
        assert '"event": "draining"' in d.logs()
    finally:
        d.kill()
        col.close()
        pub.close()


def test_a_refused_case_file_at_start_is_named_and_the_others_run(
        tmp_path: Path, broker_url: str) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(EXAMPLE_CASES / "C-0001.geojson", cases)
    (cases / "bad.geojson").write_text("[]")
    d = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db", cases=cases)
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        d.wait_ready()
        assert d.get("/readyz").json()["cases_refused"] == [str(cases / "bad.geojson")]
        assert d.metric("tagwatch_cases_refused") == 1
        assert '"event": "case_file_refused"' in d.logs() and "bad.geojson" in d.logs()
        for fix in breach_fixes():
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        col.wait_for(lambda ms: any("/alerts/C-0001" in t for t, _, _ in ms), 15, "C-0001")
    finally:
        assert d.stop() == 0
        col.close()
        pub.close()


def test_no_good_case_file_is_up_not_ready_and_off_the_broker_until_a_reload(
        tmp_path: Path, broker_url: str) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "C-0001.geojson").write_text(BAD_C1)
    d = make_daemon(tmp_path, broker_url, f"sqlite://{tmp_path}/record.db", cases=cases)
    col = Collector(broker_url, f"{d.prefix}/alerts/#")
    pub = Publisher(broker_url)
    d.start()
    try:
        _wait_log(d, '"event": "no_cases"')
        ready = _wait_readyz(d)
        assert ready.status_code == 503
        assert "no_cases" in ready.json()["reasons"]
        assert ready.json()["cases_refused"] == [str(cases / "C-0001.geojson")]
        assert d.metric("tagwatch_cases_loaded") == 0
        assert "+447700900999" not in d.logs() + ready.text
        assert '"event": "connected"' not in d.logs()  # the broker keeps the fixes queued

        shutil.copy(EXAMPLE_CASES / "C-0001.geojson", cases)
        d.signal(signal.SIGHUP)
        d.wait_ready()
        for fix in breach_fixes():
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        col.wait_for(lambda ms: any("/alerts/C-0001" in t for t, _, _ in ms), 15, "C-0001")
    finally:
        assert d.stop() == 0
        col.close()
        pub.close()


def _wait_readyz(d, timeout: float = 15.0):
    """The first /readyz answer (the HTTP server is up), with a deadline."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            return d.get("/readyz")
        except httpx.TransportError:
            assert time.monotonic() < deadline, d.logs()[-2000:]
            time.sleep(0.05)  # polling the port, with a deadline


def test_a_bad_config_is_exit_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text('[ingest]\nbatch_max = 0\n')
    done = subprocess.run([sys.executable, "-m", "tagwatch.cli", "run", "--config",
                           str(config)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2 and "batch_max" in done.stderr
