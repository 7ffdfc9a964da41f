"""`tagwatch demo`: everything on one machine, with nothing to set up.

An in-process MQTT broker (unless `--broker` names one), the daemon with a
SQLite record in a temporary folder and the operator dashboard, and the
simulator playing the "day in the life" scenario in accelerated time. Alerts
are printed as they happen, all in scenario time (an operator's acknowledgement
too). Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops everything and removes
the folder.

The scenario's fixes come in all three ways tagwatch takes them: tags and victim devices
over MQTT as tagwatch's own fix JSON, a victim's phone as the OwnTracks app (on
`owntracks/USER/DEVICE`), and a tag through a Traccar server (POSTed to
/ingest/traccar with the token of an `ingest` user made for this run only).

The daemon runs with the event clock (`[ingest] clock = "event"`): the
scenario's fixes carry scenario time, which runs faster than the wall clock.
Where the scenario expects nothing, time runs QUIET times faster still, so the
story starts within seconds (simulators.runner.Pacing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from hashlib import sha256
from pathlib import Path

from tagwatch.ingest.embedded_broker import EmbeddedBroker, free_port
from tagwatch.shipped import example

SCENARIO = example("scenarios", "day_in_the_life.toml")  # package data (tagwatch.shipped)
PREFIX = "tagwatch/v1"
OWNTRACKS = "owntracks"  # [ingest] owntracks_prefix: the victim phones of the OwnTracks app
QUIET = 20.0  # quiet stretches play this many times faster than --speed


class DemoError(RuntimeError):
    pass


def run(broker: str | None, speed: float, scenario: Path, port: int | None) -> int:
    """Run the demo until the scenario ends and then until Ctrl-C (or SIGTERM)."""
    with tempfile.TemporaryDirectory(prefix="tagwatch-demo-") as tmp:
        try:
            return asyncio.run(_demo(broker, speed, scenario, port, Path(tmp)))
        except KeyboardInterrupt:
            return 0


async def _demo(
    broker: str | None, speed: float, scenario: Path, port: int | None, workdir: Path
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: terminal closed
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if broker is None:
            broker = (await stack.enter_async_context(EmbeddedBroker())).url
            say(f"in-process MQTT broker on {broker} (demo only: nothing persists)")
        else:
            await _check_broker(broker)
        token = secrets.token_urlsafe(16)
        # the simulated Traccar server's: a fresh one each run, never a published hash
        ingest_token = secrets.token_urlsafe(16)
        port = port or free_port()
        config = _config(workdir, broker, port, token, scenario, ingest_token)
        daemon = _start_daemon(config, workdir / "daemon.log")
        stack.push_async_callback(_stop_daemon, daemon)
        await _wait_ready(daemon, port, workdir / "daemon.log")
        say(f"dashboard: http://127.0.0.1:{port}/  token: {token}")
        say(f"record and daemon log in {workdir} (removed at exit)")
        say(
            f"playing {scenario.name} at {speed:g}x, quiet stretches at {speed * QUIET:g}x; "
            "times are scenario times; Ctrl-C stops everything\n"
        )
        traccar = (f"http://127.0.0.1:{port}/ingest/traccar", ingest_token)
        result = await _play(scenario, broker, speed, stop, traccar)
        if result is not None:
            say(f"\n{result.summary()}")
            say("the dashboard stays up; Ctrl-C stops everything")
        await stop.wait()
    say("stopped")
    return 0


async def _check_broker(url: str) -> None:
    """Fail at once, naming the broker (without credentials), when it cannot be reached."""
    from tagwatch.ingest.mqtt import BrokerSettings, probe_mqtt5

    try:
        settings = BrokerSettings.from_url(url)
    except ValueError:
        raise DemoError("--broker: expected mqtt://host[:port] or mqtts://host[:port]") from None
    try:
        await probe_mqtt5(settings, timeout_s=10.0)
    except (OSError, TimeoutError) as exc:
        why = str(exc) or "no answer within 10 s"
        raise DemoError(f"MQTT broker {settings.url}: cannot connect ({why})") from None


def say(text: str) -> None:
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP): still clean up
        print(text, flush=True)


def _config(
    workdir: Path, broker: str, port: int, token: str, scenario: Path, ingest_token: str
) -> Path:
    from simulators.scenario import load_scenario

    cases = load_scenario(scenario).cases
    text = f"""\
[broker]
url = "{broker}"
client_id = "tagwatch-demo"
topic_prefix = "{PREFIX}"

[cases]
path = "{cases}"

[record]
url = "sqlite:///{workdir / "record.db"}"

[ingest]
clock = "event"
owntracks_prefix = "{OWNTRACKS}"

[feed]
listen = "127.0.0.1:{port}"

[[feed.users]]
name = "demo-operator"
role = "operator"
token_sha256 = "{sha256(token.encode()).hexdigest()}"

[[feed.users]]
name = "demo-traccar"
role = "ingest"
token_sha256 = "{sha256(ingest_token.encode()).hexdigest()}"

[log]
level = "info"
json = true
"""
    path = workdir / "tagwatch.toml"
    path.write_text(text)
    return path


def _start_daemon(config: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGWATCH_")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tagwatch.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


async def _wait_ready(daemon: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise DemoError(
                f"the daemon exited with {daemon.returncode}; see {log}:\n"
                + log.read_text()[-2000:]
            )
        try:
            await asyncio.to_thread(
                urllib.request.urlopen, f"http://127.0.0.1:{port}/readyz", timeout=1
            )
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise DemoError(f"the daemon did not become ready within 60 s; see {log}")


async def _play(
    scenario: Path, broker: str, speed: float, stop: asyncio.Event, traccar: tuple[str, str]
):
    from simulators.runner import Pacing, run_scenario
    from simulators.scenario import load_scenario
    from simulators.verify import alert_line

    plan = load_scenario(scenario)
    pacing = Pacing(plan, speed, quiet=QUIET)

    def on_alert(alert: dict) -> None:
        say(alert_line(in_scenario_time(alert, plan.start, pacing), plan.start))

    play = asyncio.create_task(
        run_scenario(
            plan,
            broker,
            PREFIX,
            speed,
            on_alert,
            pacing=pacing,
            traccar=traccar,
            owntracks_prefix=OWNTRACKS,
        )
    )
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({play, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not play.done():
        await _cancel(play)
        return None
    return play.result()


async def _cancel(task: asyncio.Task) -> None:
    """Cancel `task` and wait for it to end, asking again until it does: on Python 3.11
    asyncio.wait_for (which aiomqtt's publish awaits) drops a cancellation that lands as
    its future completes, and the scenario then played on to its end after Ctrl-C."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def in_scenario_time(alert: dict, start: float, pacing) -> dict:
    """An operator's record (acknowledged, or resolved by someone) is made at a wall
    time (`raised`, the action's); shown at the scenario time being played then."""
    from tagwatch.wire import parse_rfc3339, rfc3339

    operator = alert.get("state") == "acknowledged" or (
        alert.get("state") == "resolved" and str(alert.get("detail", "")).startswith("resolved by")
    )
    if not operator:
        return alert
    try:
        wall = parse_rfc3339(str(alert.get("raised", alert["ts"])).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return alert
    return {**alert, "ts": rfc3339(start + pacing.scenario_s(wall - pacing.wall0))}


async def _stop_daemon(daemon: subprocess.Popen) -> None:
    """SIGTERM, then wait without blocking the loop: the embedded broker runs on it, and
    the daemon's last publishes and its disconnect wait for that broker's answers."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(daemon.wait, 20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            await asyncio.to_thread(daemon.wait)
