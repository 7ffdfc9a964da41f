"""`record` and `load` against a real broker (Mosquitto, or the embedded broker)."""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiomqtt
import pytest

from simulators.capture import record
from simulators.load import CASE_ID, run_load, write_cases
from simulators.runner import broker_address
from tagwatch.config import Rules
from tagwatch.engine.alerts import encode
from tagwatch.pipeline import Inbound, Pipeline
from tagwatch.replay import read_messages
from tagwatch.wire import Topics
from tests.brokers import unique_prefix
from zones import ZoneSet, load_cases

TIMEOUT_S = 15


def test_record_captures_what_a_publisher_sends(broker_url, tmp_path):
    prefix = unique_prefix()
    topics = Topics(prefix)
    out = tmp_path / "capture.jsonl"
    sent = [
        (topics.tag_fix("T-1001"), b'{"ts": "2026-11-02T10:00:00Z", "lat": 51.5, "lon": -0.1}'),
        (topics.victim_fix("VD-01"), b'[{"ts": 1793700000, "lat": 51.5, "lon": -0.12}]'),
        (topics.tag_fix("T-1001"), b"\xffnot json"),
        (f"{prefix}/alerts/C-0001", b'{"not": "a fix topic"}'),
        (topics.tag_fix("T-2002"), b'{"ts": "2026-11-02T10:00:05Z", "fix": "none"}'),
    ]

    async def scenario() -> int:
        ready = asyncio.Event()
        task = asyncio.create_task(record(broker_url, out, prefix, TIMEOUT_S, 4, ready))
        await asyncio.wait_for(ready.wait(), TIMEOUT_S)
        host, port = broker_address(broker_url)
        async with aiomqtt.Client(host, port) as pub:
            for topic, payload in sent:
                await pub.publish(topic, payload, qos=1)
        return await asyncio.wait_for(task, TIMEOUT_S)

    before = time.time()
    assert asyncio.run(scenario()) == 4
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["topic"] for line in lines] == [t for t, _ in sent if "/alerts/" not in t]
    assert lines[0]["payload"] == {"ts": "2026-11-02T10:00:00Z", "lat": 51.5, "lon": -0.1}
    assert lines[1]["payload"] == [{"ts": 1793700000, "lat": 51.5, "lon": -0.12}]
    assert lines[2]["payload"] == "\ufffdnot json"
    assert all(line["received"].endswith("Z") for line in lines)
    # tagwatch replay reads it back, arrival times included
    inbound = list(read_messages(out, Topics(prefix)))
    assert len(inbound) == 4 and all(before - 1 <= m.received <= time.time() + 1 for m in inbound)


async def _responder(broker_url: str, prefix: str, cases, ready: asyncio.Event) -> None:
    """A stand-in for the daemon: tagwatch's pipeline between fix and alert topics."""
    topics = Topics(prefix)
    pipeline = Pipeline(ZoneSet(load_cases(cases).cases), Rules(), topics, event_clock=True)
    host, port = broker_address(broker_url)
    async with aiomqtt.Client(host, port) as mqtt:
        await mqtt.subscribe(topics.tag_fixes, qos=1)
        ready.set()
        async for message in mqtt.messages:
            result = pipeline.process([Inbound(message.topic.value, bytes(message.payload),
                                               time.time())])
            for rec in result.records:
                await mqtt.publish(topics.alerts(rec.case), encode(rec), qos=1)


def test_load_measures_latency_by_matching_breach_alerts_to_fixes(broker_url, tmp_path):
    prefix = unique_prefix()
    cases = write_cases(tmp_path, 20)

    progress = io.StringIO()

    async def scenario():
        ready = asyncio.Event()
        responder = asyncio.create_task(_responder(broker_url, prefix, cases, ready))
        await asyncio.wait_for(ready.wait(), TIMEOUT_S)
        try:
            # drain_s only bounds the wait for the last alerts (it ends when all are back):
            # this responder, in the test's own process, was 5.6 s behind at load 20
            return await run_load(broker_url, 20, 200, 2.0, prefix, drain_s=60.0,
                                  progress=progress)
        finally:
            responder.cancel()

    started = time.time()
    report = asyncio.run(scenario())
    run_ms = (time.time() - started) * 1000
    assert 380 <= report.sent <= 420
    assert report.expected_alerts == pytest.approx(report.sent / 4, abs=20)
    assert report.alerts == report.expected_alerts
    # Not a timing test (the machine is shared): each latency is matched to its own fix,
    # so it is positive and, in milliseconds, no longer than the whole run that held it.
    assert len(report.latencies_ms) == report.alerts
    assert all(0 < ms < run_ms for ms in report.latencies_ms)
    assert "fixes/s achieved" in report.lines()[0]
    assert f"sent {report.sent}" in progress.getvalue()
    assert CASE_ID in cases.read_text()


def test_load_refuses_out_of_bounds_loads():
    with pytest.raises(ValueError, match="--tags"):
        asyncio.run(run_load("mqtt://127.0.0.1:1883", 0, 1, 1))
