"""A victim device's payload is the victim's position: no rejection carries it, whether
the device is known, unknown, or the topic is not one tagwatch recognises."""

from __future__ import annotations

import msgspec

from tagwatch.pipeline import Inbound

from .tracks import DEVICE, TOPICS, at_distance, fix, pipeline, tag_msg, utc, victim_msg

T0 = utc("2026-07-06T10:00:00Z")
VICTIM_POSITION = at_distance(100, 5000)


def _rejected(*messages: Inbound):
    return pipeline().process(list(messages)).rejected


def test_a_known_devices_bad_payload_is_rejected_without_it() -> None:
    bad = {**fix(T0, VICTIM_POSITION), "acc": -1}
    (rej,) = _rejected(victim_msg(bad))
    assert rej.rejection.reason == "out_of_range" and rej.rejection.payload == ""


def test_an_unknown_devices_position_is_not_kept() -> None:
    payload = msgspec.json.encode(fix(T0, VICTIM_POSITION))
    (rej,) = _rejected(Inbound(TOPICS.victim_fix("VD-UNKNOWN"), payload, None))
    assert rej.rejection.reason == "unknown_device" and rej.rejection.payload == ""


def test_an_unrecognised_topic_keeps_no_payload() -> None:
    payload = msgspec.json.encode(fix(T0, VICTIM_POSITION))
    topic = TOPICS.victim_fix(DEVICE) + "/extra"
    (rej,) = _rejected(Inbound(topic, payload, None))
    assert rej.rejection.reason == "unknown_topic" and rej.rejection.payload == ""


def test_a_tags_bad_payload_is_kept_for_the_operators() -> None:
    bad = {**fix(T0, at_distance(100, 5000)), "acc": -1}
    (rej,) = _rejected(tag_msg(bad))
    assert rej.rejection.reason == "out_of_range" and '"acc":-1' in rej.rejection.payload
