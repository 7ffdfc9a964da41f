"""Running a scenario live: publish to the broker in accelerated or real time, verify alerts.

Pacing: the message of scenario time t is published at wall time
`wall0 + t / speed` (or as a `Pacing` says: the demo plays quiet stretches
faster). Fix timestamps are always `start + t` (scenario time),
so schedules are deterministic and the daemon's event-time rules see real
speeds. Commands on `{prefix}/tags/+/cmd` (`rate`, `warn`) reach the simulated
tags as they arrive. Alerts on `{prefix}/alerts/#` are verified as they come;
after the script the runner waits until every expectation is met or its wall
deadline has passed.

Wall-clock watchdogs: `tag.no_comms` in a daemon that ticks its watchdogs on
the wall clock compares the wall clock with fix timestamps of scenario time.
Accelerated runs therefore need a daemon whose watchdog clock is event time
(the pipeline's `event_clock=True`, as replay does); with `realtime=True` the
runner instead re-bases the scenario to start now (`rebase=True`), so fix
timestamps track the wall clock and a wall-clock daemon judges silence truly;
schedules then fall at the real time of day.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import aiomqtt
import orjson

from simulators.broker import BrokerOptions
from simulators.broker import parse as parse_broker
from simulators.scenario import Scenario, load_scenario
from simulators.verify import Verifier, VerifyResult
from tagwatch.wire import Topics

SETTLE_S = 1.0  # after the last expectation is met, still listen for forbidden alerts


class Pacing:
    """When each scenario second is played, in wall seconds after the start (`wall_s`),
    and back (`scenario_s`). Plain: `t / speed`. With `quiet`, the stretches where the
    scenario expects nothing play `quiet` times faster: only the windows
    [after_s - lead_s, after_s + within_s] of its expectations run at `speed` (lead_s
    defaults to 5 wall seconds of scenario time), so a demo's story starts at once."""

    def __init__(self, scenario: Scenario, speed: float, quiet: float = 1.0,
                 lead_s: float | None = None) -> None:
        self.speed, self.wall0 = speed, 0.0
        lead = 5.0 * speed if lead_s is None else lead_s
        end = scenario.duration_s
        windows = sorted((max(0.0, e.after_s - lead), min(end, e.after_s + e.within_s))
                         for e in scenario.expects) if quiet != 1.0 else []
        # (start, end, rate) pieces covering [0, end], in order
        pieces, t = [], 0.0
        for lo, hi in windows:
            if hi <= t:
                continue
            if lo > t:
                pieces.append((t, lo, speed * quiet))
            pieces.append((max(lo, t), hi, speed))
            t = hi
        if t < end or not pieces:
            pieces.append((t, max(t, end), speed * quiet if windows else speed))
        self.pieces = pieces

    def wall_s(self, t: float) -> float:
        """Wall seconds after the start at which scenario time t is played."""
        wall = 0.0
        for lo, hi, rate in self.pieces:
            if t <= hi or (lo, hi, rate) == self.pieces[-1]:
                return wall + (t - lo) / rate
            wall += (hi - lo) / rate
        return wall

    def scenario_s(self, wall_s: float) -> float:
        """The scenario time played `wall_s` wall seconds after the start (its end after
        the end, its start before the start)."""
        wall = 0.0
        for lo, hi, rate in self.pieces:
            span = (hi - lo) / rate
            if wall_s <= wall + span:
                return max(lo, lo + (wall_s - wall) * rate)
            wall += span
        return self.pieces[-1][1]



def broker_address(url: str | BrokerOptions) -> tuple[str, int]:
    options = url if isinstance(url, BrokerOptions) else parse_broker(url)
    return options.host, options.port


def no_delay(mqtt: aiomqtt.Client) -> None:
    """Turn Nagle off on a connected client: with the peer's delayed ACK it adds ~40 ms
    to small QoS 1 messages. aiomqtt has no option for it, so reach the paho socket."""
    sock = mqtt._client.socket()
    if sock is not None and hasattr(sock, "setsockopt"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client(url: str | BrokerOptions, name: str, in_flight: int = 100) -> aiomqtt.Client:
    """A client for a broker URL (plain MQTT, no credentials) or full BrokerOptions."""
    b = url if isinstance(url, BrokerOptions) else parse_broker(url, environ={})
    mqtt = aiomqtt.Client(b.host, b.port, identifier=f"{name}-{uuid.uuid4().hex[:8]}",
                          username=b.username, password=b.password,
                          tls_context=b.tls_context(),
                          max_queued_incoming_messages=0, max_inflight_messages=in_flight)
    # concurrent QoS 1 publishes are the point of `load`; aiomqtt warns at 10 by default
    mqtt.pending_calls_threshold = max(mqtt.pending_calls_threshold, 2 * in_flight)
    return mqtt


async def run_scenario(
    path: str | Path | Scenario,
    broker_url: str | BrokerOptions,
    prefix: str = "tagwatch/v1",
    speed: float = 60.0,
    on_alert: Callable[[dict], None] | None = None,
    realtime: bool = False,
    on_command: Callable[[str, str], None] | None = None,
    pacing: Pacing | None = None,
    traccar: tuple[str, str] | None = None,
    owntracks_prefix: str = "owntracks",
) -> VerifyResult:
    """Publish a scenario to the broker and verify the alerts that come back.

    `speed` divides the wall pacing (ignored when `realtime`); `on_alert` gets every
    alert record as a dict as it arrives. Raises ScenarioError for a bad file.
    `traccar`: (URL of tagwatch's /ingest/traccar, bearer token of an `ingest` user) for
    the tags of `protocol = "traccar"`; `owntracks_prefix`: the topic prefix of the
    victim phones of `protocol = "owntracks"` (the daemon's `[ingest] owntracks_prefix`).
    """
    scenario = path if isinstance(path, Scenario) else load_scenario(path)
    if realtime:
        speed = 1.0
        scenario = replace(scenario, start=float(int(time.time())))
    topics = Topics(prefix, owntracks=owntracks_prefix)
    sim = scenario.simulation(topics)
    if traccar is None and any(d.spec.protocol == "traccar" for d in sim.devices.values()):
        raise ValueError("a tag of the scenario speaks Traccar: give the /ingest/traccar "
                         "URL and an ingest user's token")
    pace = pacing if pacing is not None and not realtime else Pacing(scenario, speed)
    pace.wall0 = wall0 = time.time() + 0.5
    verifier = Verifier(scenario, wall_at=lambda t: wall0 + pace.wall_s(t))
    async with client(broker_url, "tagwatch-sim") as mqtt:
        no_delay(mqtt)
        await mqtt.subscribe(f"{prefix}/alerts/#", qos=1)
        await mqtt.subscribe(f"{prefix}/tags/+/cmd", qos=1)
        listener = asyncio.create_task(
            _listen(mqtt, prefix, sim, verifier, on_alert, on_command))
        try:
            verifier.result.published = await _publish(mqtt, sim, scenario, wall0, pace,
                                                       traccar)
            await _wait_for_expectations(verifier, listener)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    return verifier.finish()


async def _publish(mqtt: aiomqtt.Client, sim, scenario: Scenario, wall0: float,
                   pace: Pacing, traccar: tuple[str, str] | None = None) -> int:
    count = 0
    while (t := sim.next_time()) <= scenario.duration_s:
        delay = wall0 + pace.wall_s(t) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for em in sim.step():
            if em.via == "traccar":
                await asyncio.to_thread(post_traccar, *traccar, em.payload)
            else:
                await mqtt.publish(em.topic, em.payload, qos=1)
            count += 1
    return count


def post_traccar(url: str, token: str, body: bytes, timeout: float = 10.0) -> None:
    """POST one position as Traccar's JSON forwarding does; tagwatch answers 200 once it
    is committed. Anything else is an error naming the status and tagwatch's reason."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        reason = exc.read()[:200].decode("utf-8", "replace")
        raise OSError(f"{url}: HTTP {exc.code}: {reason}") from None


async def _listen(mqtt, prefix, sim, verifier: Verifier, on_alert, on_command):
    cmd_head, alert_head = f"{prefix}/tags/", f"{prefix}/alerts/"
    async for message in mqtt.messages:
        topic = message.topic.value
        now = time.time()
        if topic.startswith(alert_head):
            try:
                alert = orjson.loads(message.payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(alert, dict):
                verifier.on_alert(alert, now)
                if on_alert is not None:
                    on_alert(alert)
        elif topic.startswith(cmd_head) and topic.endswith("/cmd"):
            tag = topic[len(cmd_head):-len("/cmd")]
            done = sim.command(tag, bytes(message.payload))
            if done and on_command is not None:
                on_command(tag, done)


async def _wait_for_expectations(verifier: Verifier, listener: asyncio.Task) -> None:
    """Until every expectation is met (then a short settle) or all wall deadlines passed."""
    while True:
        pending = verifier.pending
        if listener.done():
            listener.result()  # re-raises a broken connection
            return
        if not pending:
            await asyncio.sleep(SETTLE_S)
            return
        last = max(verifier.deadline(rule) for rule in pending)
        if time.time() > last:
            return
        await asyncio.sleep(min(0.2, max(0.01, last - time.time())))
