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


# -- issue 16.6: no value of a victim's message is ever quoted ------------------------------

LAT, LON = f"{VICTIM_POSITION[1]:.7f}", f"{VICTIM_POSITION[0]:.7f}"


def _quotes_nothing(rej, *values: str) -> None:
    text = f"{rej.rejection.detail} {rej.rejection.payload}"
    assert rej.rejection.payload == ""
    for value in (LAT[:6], LON[:6], *values):
        assert value not in text, (value, text)


def test_a_victim_fix_with_its_position_as_strings_quotes_neither() -> None:
    bad = {**fix(T0, None), "fix": "gnss", "lat": LAT, "lon": LON, "bat": "41%"}
    (rej,) = _rejected(victim_msg(bad))
    assert rej.rejection.reason == "wrong_type"
    assert "lat" in rej.rejection.detail and "bat" in rej.rejection.detail  # fields named
    _quotes_nothing(rej, "41%", "string")


def test_a_victim_batch_names_the_fix_and_the_field_but_no_value() -> None:
    good = fix(T0, VICTIM_POSITION)
    (rej,) = _rejected(victim_msg([good, {**good, "ts": T0 + 1, "lat": 123.4567}]))
    assert rej.rejection.reason == "out_of_range"
    assert rej.rejection.detail.startswith("fix 2 of 2: lat")
    _quotes_nothing(rej, "123.4567")


def test_a_victim_device_on_the_tags_path_is_treated_as_a_victim_message() -> None:
    # unknown_tag used to carry the whole payload: the victim's position
    (rej,) = _rejected(tag_msg(fix(T0, VICTIM_POSITION), tag=DEVICE))
    assert rej.source == DEVICE and rej.rejection.reason == "unknown_tag"
    _quotes_nothing(rej)
    (rej,) = _rejected(tag_msg({**fix(T0, VICTIM_POSITION), "tag": "T-1"}, tag=DEVICE))
    _quotes_nothing(rej, "T-1")


def test_a_victim_message_set_aside_quotes_none_of_it() -> None:
    msg = victim_msg({**fix(T0, VICTIM_POSITION), "note": "FAULT"})
    (rej,) = pipeline().set_aside(msg, RuntimeError("x")).rejected
    assert rej.rejection.reason == "internal_error"
    _quotes_nothing(rej)
