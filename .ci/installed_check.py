"""CI: the package as `pip install .` gives it works, away from the checkout.

Builds the wheel, installs it in a fresh venv in a temporary folder outside
the checkout and, from another folder of that temporary tree:
  1. `tagwatch demo` must print a breach alert within 90 s, then stop on Ctrl-C;
  2. `tagwatch run` with the shipped example configuration (its cases path and
     record set by the environment, as deploy/README.md does) must serve the
     dashboard page and its script, then stop on SIGTERM with exit 0.
Any failure prints what was seen and exits 1.

    python3 .ci/installed_check.py [--keep]
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT_S = 90
RUN_TIMEOUT_S = 60
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
              ".hypothesis", "test-artifacts")


class CheckFailed(Exception):
    pass


def main() -> int:
    keep = "--keep" in sys.argv[1:]
    tmp = Path(tempfile.mkdtemp(prefix="tagwatch-installed-"))
    try:
        tagwatch = _install(tmp)
        elsewhere = tmp / "elsewhere"
        elsewhere.mkdir()
        _check_demo(tagwatch, elsewhere)
        _check_run(tagwatch, elsewhere)
    except CheckFailed as exc:
        print(f"\nci: INSTALLED PACKAGE CHECK FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"ci: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("ci: installed package check passed (wheel, demo, run)")
    return 0


def _install(tmp: Path) -> Path:
    dist, venv, source = tmp / "dist", tmp / "venv", tmp / "source"
    # From a clean copy: setuptools would take stale files from the checkout's build/.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    _step("building the wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                                 "-w", str(dist), str(source)])
    wheels = list(dist.glob("tagwatch-*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"expected one wheel in {dist}, found {wheels}")
    _step("making a fresh venv", [sys.executable, "-m", "venv", str(venv)])
    _step(f"installing {wheels[0].name}",
          [str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])])
    return venv / "bin" / "tagwatch"


def _step(what: str, command: list[str]) -> None:
    print(f"ci: {what}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT.parent)
    if done.returncode != 0:
        raise CheckFailed(f"{what}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")


def _env() -> dict[str, str]:
    # Nothing of the checkout may leak in: no TAGWATCH_ settings, no PYTHONPATH.
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith("TAGWATCH_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }


def _check_demo(tagwatch: Path, cwd: Path) -> None:
    print(f"ci: tagwatch demo from {cwd}, waiting for a breach alert", flush=True)
    proc = subprocess.Popen([str(tagwatch), "demo", "--speed", "1500"], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    try:
        seen = _read_until(proc, lines, lambda line: "zone.breach" in line, DEMO_TIMEOUT_S)
        if seen is None:
            raise CheckFailed(f"tagwatch demo printed no breach alert within {DEMO_TIMEOUT_S} s "
                              f"(exit {_exit_code(proc)}):\n" + "".join(lines))
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        if code != 0:
            raise CheckFailed(f"tagwatch demo exited {code} on Ctrl-C:\n" + "".join(lines))
    finally:
        _kill(proc)
    print(f"ci: demo ok: {seen.strip()}", flush=True)


def _check_run(tagwatch: Path, cwd: Path) -> None:
    from_venv = subprocess.run(
        [str(tagwatch.parent / "python"), "-c",
         "from tagwatch.shipped import example; print(example())"],
        capture_output=True, text=True, cwd=cwd, env=_env(),
    )
    if from_venv.returncode != 0:
        raise CheckFailed(f"tagwatch.shipped.example():\n{from_venv.stderr}")
    examples = Path(from_venv.stdout.strip())
    port = _free_port()
    env = _env() | {
        "TAGWATCH_CASES_PATH": str(examples / "cases"),
        "TAGWATCH_RECORD_URL": f"sqlite:///{cwd / 'record.db'}",
        "TAGWATCH_BROKER_URL": "embedded",
        "TAGWATCH_FEED_LISTEN": f"127.0.0.1:{port}",
        # The example's token is public and refused: a user of our own, as deploy/README.md says.
        "TAGWATCH_FEED_USERS": json.dumps([{
            "name": "ci-operator", "role": "operator",
            "token_sha256": hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
        }]),
    }
    config = examples / "tagwatch.example.toml"
    print(f"ci: tagwatch run --config {config} from {cwd}", flush=True)
    log = cwd / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(tagwatch), "run", "--config", str(config)], cwd=cwd,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        page = _get_page(proc, f"http://127.0.0.1:{port}/", log)
        if "<html" not in page.lower():
            raise CheckFailed(f"GET / is not the dashboard page:\n{page[:500]}")
        script = _get(f"http://127.0.0.1:{port}/static/app.js")
        if not script:
            raise CheckFailed("GET /static/app.js is empty")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        if code != 0:
            raise CheckFailed(f"tagwatch run exited {code} on SIGTERM:\n{log.read_text()}")
    finally:
        _kill(proc)
    print("ci: run ok: the dashboard page and its script are served", flush=True)


def _get_page(proc: subprocess.Popen, url: str, log: Path) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"tagwatch run exited {proc.returncode}:\n{log.read_text()}")
        try:
            return _get(url)
        except OSError:
            time.sleep(0.2)  # polling a port that is not open yet: nothing to wait on
    raise CheckFailed(f"{url} not served within {RUN_TIMEOUT_S} s:\n{log.read_text()}")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _read_until(proc, lines: list[str], predicate, timeout: float) -> str | None:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace") + "\n"
            lines.append(line)
            if predicate(line):
                return line
    return None


def _exit_code(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None  # still running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
