"""Per-tag rate limit (issue 16.8): token buckets on the receiving clock, in the pipeline
before decoding; the excess is rejected as rate_limited, counted, and never holds up the
other tags."""

from __future__ import annotations

import orjson

from tagwatch.config import Rules
from tagwatch.ingest.ratelimit import REPORT_S, TokenBuckets
from tagwatch.pipeline import Inbound, Pipeline

from .tracks import TOPICS, at_distance, case_doc, circle, fix, tag_msg, utc, zoneset

T0 = utc("2026-07-06T10:00:00Z")


def test_a_bucket_takes_its_burst_then_its_rate() -> None:
    buckets = TokenBuckets(rate_per_s=10, burst=5)
    assert [buckets.admit("a", T0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert buckets.admit("b", T0)  # another key has its own bucket
    assert [buckets.admit("a", T0 + 0.25) for _ in range(3)] == [True, True, False]
    assert not buckets.admit("a", T0 + 0.2)  # a clock stepping back refills nothing
    assert [buckets.admit("a", T0 + 100) for _ in range(6)] == [True] * 5 + [False]
    assert buckets.report_due("a", T0 + 100) and not buckets.report_due("a", T0 + 101)
    assert buckets.report_due("a", T0 + 100 + REPORT_S)


def test_a_flooding_tag_is_limited_and_another_tags_breach_in_the_flood_still_alerts() -> None:
    doc = case_doc([circle("home", victim="V-1")], tags=("T-1", "T-2"))
    pipe = Pipeline(zoneset(doc), Rules(), TOPICS, event_clock=True, rate_limit=(10.0, 100))
    far = at_distance(100, 5000)
    flood = [tag_msg(fix(T0 - 1 + i * 1e-4, far, seq=i), "T-1", received=T0 + i / 5000)
             for i in range(5000)]  # 5,000 messages in one second
    inside = at_distance(100, -30)
    # T-2 reports every 30 s from inside (independent evidence, DESIGN 3.6); its fixes of
    # the last minute arrive in the flood (a tag back in coverage sends what it kept)
    breach = [tag_msg(fix(T0 - 60 + k * 30, inside, seq=k), "T-2", received=T0 + k * 0.2 + 0.01)
              for k in range(3)]
    messages = flood[:2000] + breach[:2] + flood[2000:] + breach[2:]
    result = pipe.process(messages)
    limited = [r for r in result.rejected if r.rejection.reason == "rate_limited"]
    admitted = sum(1 for f, _ in result.accepted if f.tag == "T-1")
    assert 100 <= admitted <= 100 + 10 + 1  # the burst, and one second at 10 a second
    assert admitted + len(limited) + result.rate_limited == 5000
    assert len(limited) == 1 and limited[0].source == "T-1"  # one recorded per REPORT_S
    assert "10 messages a second" in limited[0].rejection.detail
    breaches = [(r.tag, r.confidence) for r in result.records if r.type == "zone.breach"]
    assert breaches == [("T-2", "probable"), ("T-2", "confirmed")]
    assert [f.tag for f, _ in result.accepted].count("T-2") == 3


def test_no_receiving_clock_no_limit_and_a_victim_devices_limit_quotes_nothing() -> None:
    pipe = Pipeline(zoneset(case_doc([circle("home")])), Rules(), TOPICS, event_clock=True,
                    rate_limit=(1.0, 1))
    far = at_distance(100, 5000)
    result = pipe.process([tag_msg(fix(T0 + i, far), received=None) for i in range(20)])
    assert len(result.accepted) == 20 and result.rejected == []
    victim = [Inbound(TOPICS.victim_fix("VD-1"), f'{{"ts": {T0 + i}, "lat": "51.6"}}'.encode(),
                      T0 + 100) for i in range(3)]
    (rej,) = [r for r in pipe.process(victim).rejected if r.rejection.reason == "rate_limited"]
    assert rej.rejection.payload == "" and "51.6" not in rej.rejection.detail


def test_the_daemons_gate_decides_as_the_pipeline_does_in_replay() -> None:
    """The daemon limits at the door (RateGate, before batching), replay in the pipeline:
    the same messages in the same order with the same `received` give the same decisions."""
    from tagwatch.ingest.batcher import RateGate

    far = at_distance(100, 5000)
    messages = [tag_msg(fix(T0 + i * 0.01, far, seq=i), f"T-{i % 3}", received=T0 + i * 0.002)
                for i in range(3000)]
    doc = case_doc([circle("home")], tags=("T-0", "T-1", "T-2"))
    pipe = Pipeline(zoneset(doc), Rules(), TOPICS, event_clock=True, rate_limit=(10.0, 100))
    result = pipe.process(messages)
    gate = RateGate(TokenBuckets(10.0, 100))
    kept = gate(messages[:1234]) + gate(messages[1234:])  # bursts split anywhere
    excess, reported = gate.take()
    assert [(f.tag, f.seq) for f, _ in result.accepted] == [
        (m.topic.split("/")[3], orjson.loads(m.payload)["seq"]) for m in kept]
    assert [r.rejection.payload for r in result.rejected] == [
        pipe.rate_limited(m, gate.buckets).rejection.payload for m in reported]
    assert result.rate_limited == len(excess) and len(reported) == 3
