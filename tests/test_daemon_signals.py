"""SIGHUP reloads the cases all or nothing; SIGTERM drains and exits 0, offline published;
a refused case file at start is exit 2 naming it."""

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
    write_config,
)

C2_INSIDE = (-0.0590, 51.5403)  # in C-0002's home zone, outside its hole


def _wait_log(d, text: str, after: int = 0, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in d.logs()[after:]:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{d.logs()[-2000:]}"
        time.sleep(0.05)  # polling the log file, with a deadline


def test_sighup_keeps_old_cases_on_a_bad_file_then_sigterm_drains(
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
        shutil.copy(EXAMPLE_CASES / "C-0002.geojson", cases)
        (cases / "C-0003.geojson").write_text('{"type": "FeatureCollection", "case": ')
        mark = len(d.logs())
        d.signal(signal.SIGHUP)
        _wait_log(d, "reload_refused", mark)
        assert "C-0003.geojson" in d.logs()[mark:]

        now = time.time()
        c2 = {"ts": now - 5, "lat": C2_INSIDE[1], "lon": C2_INSIDE[0], "acc": 5.0}
        pub.send(f"{d.prefix}/tags/T-2002/fix", c2)  # C-0002 not loaded: unknown tag
        col.wait_for(lambda ms: any("/rejected/T-2002" in t for t, _, _ in ms), 15)
        assert col.json_on("/rejected/T-2002")[0]["reason"] == "unknown_tag"

        (cases / "C-0003.geojson").unlink()
        mark = len(d.logs())
        d.signal(signal.SIGHUP)
        _wait_log(d, '"event": "reloaded"', mark)
        for i in range(2):
            pub.send(f"{d.prefix}/tags/T-2002/fix", {**c2, "ts": now - 4 + i})
        col.wait_for(lambda ms: any("/alerts/C-0002" in t for t, _, _ in ms), 15, "C-0002")

        for fix in breach_fixes(t0=now - 2):
            pub.send(f"{d.prefix}/tags/T-1001/fix", fix)
        d.signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0
        assert wait_status(broker_url, d.prefix, "offline")["state"] == "offline"
        assert '"event": "draining"' in d.logs()
    finally:
        d.kill()
        col.close()
        pub.close()


def test_a_refused_case_file_at_start_is_exit_2_naming_it(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(EXAMPLE_CASES / "C-0001.geojson", cases)
    (cases / "bad.geojson").write_text("[]")
    config = write_config(tmp_path / "t.toml", "mqtt://127.0.0.1:1", "sqlite:///"
                          + str(tmp_path / "r.db"), "x/v1", cases=cases)
    done = subprocess.run([sys.executable, "-m", "tagwatch.cli", "run", "--config",
                           str(config)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2
    assert "bad.geojson" in done.stderr.splitlines()[-1]


def test_a_bad_config_is_exit_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text('[ingest]\nbatch_max = 0\n')
    done = subprocess.run([sys.executable, "-m", "tagwatch.cli", "run", "--config",
                           str(config)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2 and "batch_max" in done.stderr
