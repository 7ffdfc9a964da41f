"""OwnTracks messages through the pipeline (DESIGN 3.1, 3.4): topic, case member,
conversion of a `location` to a victim fix, other `_type`s ignored, rejections that
quote nothing of the victim's message."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from tagwatch.config import Rules, load_config
from tagwatch.pipeline import Inbound, Pipeline
from tagwatch.wire import Topics, owntracks_payload
from tests.test_casefile import good_doc, refused, write
from tests.tracks import at_distance, case_doc, circle, fix, run, tag_msg, utc, zoneset
from zones import load_case_file

T0 = utc("2026-07-06T10:00:00Z")
TOPICS = Topics("tagwatch/v1", "owntracks")
HERE = at_distance(100, 3000)


def ot_pipeline() -> Pipeline:
    doc = case_doc([circle("home")])
    doc["case"]["victims"] = [{"id": "V-1", "owntracks": "alice/phone"}]
    return Pipeline(zoneset(doc), Rules(), TOPICS, event_clock=True)


def ot_msg(obj: object, topic: str = "owntracks/alice/phone") -> Inbound:
    return Inbound(topic, orjson.dumps(obj), None)


def location(ts: float, pos: tuple[float, float], **extra) -> dict:
    return {"_type": "location", "tst": ts, "lon": pos[0], "lat": pos[1], "acc": 12, **extra}


def test_topics_parse_owntracks_only_when_taken():
    assert TOPICS.parse("owntracks/alice/phone") == ("owntracks", "alice/phone")
    assert TOPICS.parse("owntracks/alice") is None
    assert TOPICS.parse("owntracks/alice/phone/event") is None
    assert Topics().parse("owntracks/alice/phone") is None
    assert TOPICS.fix_filters[-1] == "owntracks/+/+"
    assert len(Topics().fix_filters) == 2
    with pytest.raises(ValueError, match="owntracks prefix"):
        Topics("tagwatch/v1", "own/+")


def test_a_location_is_converted_field_by_field():
    payload, ignored = owntracks_payload(orjson.dumps(
        {"_type": "location", "tst": 1780000000, "lat": 51.5, "lon": -0.1, "acc": 9,
         "batt": 77, "vel": 36, "cog": 270, "tid": "al"}))
    assert ignored is None
    assert orjson.loads(payload) == {"ts": 1780000000, "lat": 51.5, "lon": -0.1, "acc": 9,
                                     "bat": 77, "hdg": 270, "spd": 10.0}
    unknown, _ = owntracks_payload(b'{"_type":"location","tst":1,"lat":1,"lon":1,"vel":-1,'
                                   b'"cog":-1}')
    assert orjson.loads(unknown) == {"ts": 1, "lat": 1, "lon": 1}
    assert owntracks_payload(b'{"_type":"transition"}') == (None, "transition")
    assert owntracks_payload(b'{"_type":"whatever"}') == (None, "other")
    assert owntracks_payload(b'{"no type":1}') == (None, "other")


def test_an_owntracks_location_moves_the_victims_mobile_zone():
    p = ot_pipeline()
    r = run([ot_msg(location(T0, HERE)), tag_msg(fix(T0 + 5, at_distance(100, 3100)))], p)
    assert [(x.type, x.state, x.severity, x.victim) for x in r.records] == [
        ("proximity", "open", "critical", "V-1")]
    assert p.engine.devices["owntracks:alice/phone"].ts == T0


def test_other_types_are_counted_and_a_bad_location_rejected_without_its_values():
    p = ot_pipeline()
    result = p.process([
        ot_msg({"_type": "transition", "event": "enter"}),
        ot_msg({"_type": "card", "name": "Alice"}),
        ot_msg({"_type": "location", "tst": T0, "lat": "51.5123", "lon": -0.1432, "acc": 5}),
        ot_msg([location(T0, HERE)]),
        ot_msg(location(T0, HERE), topic="owntracks/bob/phone"),
        Inbound("owntracks/alice/phone", b"{not json 51.5123", None),
    ])
    assert dict(result.ignored) == {"transition": 1, "card": 1}
    assert [r.rejection.reason for r in result.rejected] == [
        "wrong_type", "not_object", "unknown_device", "not_json"]
    for r in result.rejected:
        assert r.source == ""  # USER/DEVICE is no topic level of the rejected topic
        assert r.rejection.payload == ""
        assert "51.5123" not in r.rejection.detail and "0.1432" not in r.rejection.detail
    assert "lat" in result.rejected[0].rejection.detail


def test_the_case_member_owntracks_is_validated(tmp_path: Path):
    doc = good_doc()
    doc["case"]["victims"][0].pop("device", None)
    doc["case"]["victims"][0]["owntracks"] = "alice.k/pixel-7"
    case = load_case_file(write(tmp_path, "ok.geojson", doc))
    assert case.victims[0].owntracks == "alice.k/pixel-7"
    assert case.victims[0].phone_device == "owntracks:alice.k/pixel-7"
    for bad in ["alice", "alice/phone/x", "alice/", "al ice/phone", 7, "a/" + "x" * 65]:
        d = copy.deepcopy(doc)
        d["case"]["victims"][0]["owntracks"] = bad
        folder = tmp_path / f"bad{len(str(bad))}"
        folder.mkdir()
        refused(folder, d, "case.victims[0].owntracks", "USER/DEVICE")
    both = copy.deepcopy(doc)
    both["case"]["victims"][0]["device"] = "VD-9"
    (tmp_path / "both").mkdir()
    refused(tmp_path / "both", both, "case.victims[0].owntracks", "not both")


def test_the_config_key(tmp_path: Path):
    assert load_config(None, {}).ingest.owntracks_prefix == ""
    env = {"TAGWATCH_INGEST_OWNTRACKS_PREFIX": "owntracks"}
    assert load_config(None, env).ingest.owntracks_prefix == "owntracks"
    with pytest.raises(Exception, match="OWNTRACKS_PREFIX: must be empty"):
        load_config(None, {"TAGWATCH_INGEST_OWNTRACKS_PREFIX": "owntracks/#"})


def test_replay_takes_owntracks_messages_with_the_daemons_prefix(tmp_path: Path):
    import io
    import json

    from tagwatch.replay import replay

    doc = case_doc([circle("home")])
    doc["case"]["victims"] = [{"id": "V-1", "owntracks": "alice/phone"}]
    capture = tmp_path / "capture.jsonl"
    capture.write_text(
        json.dumps({"topic": "owntracks/alice/phone", "payload": location(T0, HERE)}) + "\n"
        + json.dumps({"topic": "tagwatch/v1/tags/T-1/fix",
                      "payload": fix(T0 + 5, at_distance(100, 3100))}) + "\n")

    def types(prefix: str) -> list[str]:
        out = io.BytesIO()
        replay(zoneset(doc), Rules(), capture, out, owntracks_prefix=prefix)
        return [json.loads(line)["type"] for line in out.getvalue().splitlines()]

    assert "proximity" in types("owntracks")
    assert "proximity" not in types("")
