"""Signed fixes through `Pipeline.process` (DESIGN 5, issue 8): refused with their own reasons.

The default case of tests.tracks: tag T-1 and victim device VD-1, one 100 m
exclusion circle "home". T-1 has KEY; the device has no key unless a test
gives it one.
"""

from __future__ import annotations

import orjson
import pytest

from tagwatch import signing
from tagwatch.config import Rules
from tagwatch.pipeline import Inbound, Pipeline, Result
from tagwatch.signing import BAD_SIGNATURE, DEFAULT_WINDOW, MISSING_SEQ, REPLAYED, UNSIGNED
from tests.tracks import (
    DEVICE,
    TAG,
    TOPICS,
    at_distance,
    case_doc,
    circle,
    fix,
    run,
    tag_msg,
    utc,
    victim_msg,
    without_protection,
    zoneset,
)

T0 = utc("2026-07-06T10:00:00Z")
KEY = bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
OTHER_KEY = bytes(range(32))
DEVICE_KEY = bytes(range(100, 132))
KEYS = {TAG: KEY}


def signed_pipeline(keys: dict[str, bytes] | None = KEYS, tags: tuple[str, ...] = (TAG,)):
    doc = case_doc([circle("home", warn_m=250, victim="V-1")], tags=tags)
    return Pipeline(zoneset(doc), Rules(), TOPICS, event_clock=True, keys=keys)


def at(seq: int, distance: float = 300.0, key: bytes | None = KEY) -> dict:
    """A fix `distance` m from home's boundary (negative inside), signed with `key`."""
    obj = fix(T0 + 30.0 * seq, at_distance(100, distance), seq=seq)
    return obj if key is None else signing.sign(obj, key)


def process(pipe: Pipeline, obj: dict | list, tag: str = TAG) -> Result:
    return pipe.process([tag_msg(obj, tag)])


def only_rejection(result: Result) -> tuple[str, str, str]:
    assert len(result.rejected) == 1, result.rejected
    r = result.rejected[0]
    assert r.source == TAG
    return r.rejection.reason, r.rejection.detail, r.rejection.payload


def accepted_seqs(result: Result) -> list[int | None]:
    return [f.seq for f, _late in result.accepted]


def assert_no_key_in(detail: str) -> None:
    assert KEY.hex() not in detail.lower() and OTHER_KEY.hex() not in detail.lower()


# -- accepted -----------------------------------------------------------------------------


def test_signed_fixes_are_accepted_and_two_inside_confirm_a_breach() -> None:
    pipe = signed_pipeline()
    r = run([tag_msg(at(0)), tag_msg(at(1, -20)), tag_msg(at(2, -20))], pipe)
    assert [res.rejected for res in r.results] == [[], [], []]
    assert [accepted_seqs(res) for res in r.results] == [[0], [1], [2]]
    assert r.summary("zone.breach") == [
        ("zone.breach", "open", "warning", "probable"),
        ("zone.breach", "updated", "critical", "confirmed"),
    ]


def test_a_signed_batch_is_accepted_whatever_its_spelling() -> None:
    # Whitespace and member order differ from the canonical form the device signed.
    pipe = signed_pipeline()
    batch = [at(2), at(1), at(0)]
    text = orjson.dumps([dict(reversed(f.items())) for f in batch], option=orjson.OPT_INDENT_2)
    result = pipe.process([Inbound(TOPICS.tag_fix(TAG), text)])
    assert result.rejected == []
    assert accepted_seqs(result) == [0, 1, 2]


def test_no_keys_means_signing_off_and_unsigned_fixes_are_accepted() -> None:
    pipe = signed_pipeline(keys=None)
    result = process(pipe, at(0, key=None))
    assert result.rejected == [] and accepted_seqs(result) == [0]
    result = process(pipe, fix(T0 + 60, at_distance(100, 300)))  # no seq either
    assert result.rejected == [] and len(result.accepted) == 1


# -- refused, each with its reason ---------------------------------------------------------


def test_tampered_payload_is_bad_signature() -> None:
    pipe = signed_pipeline()
    forged = {**at(5, 300), "lat": at(5, -20)["lat"]}  # moved after signing
    result = process(pipe, forged)
    reason, detail, payload = only_rejection(result)
    assert reason == BAD_SIGNATURE
    assert f"tag {TAG}" in detail and "seq 5" in detail
    assert_no_key_in(detail)
    assert orjson.loads(payload) == forged
    assert result.accepted == [] and result.records == []


def test_wrong_key_is_bad_signature() -> None:
    result = process(signed_pipeline(), at(0, key=OTHER_KEY))
    reason, detail, _ = only_rejection(result)
    assert reason == BAD_SIGNATURE and f"tag {TAG}" in detail and "seq 0" in detail
    assert_no_key_in(detail)
    assert result.accepted == []


def test_missing_signature_is_unsigned() -> None:
    result = process(signed_pipeline(), at(0, key=None))
    reason, detail, _ = only_rejection(result)
    assert reason == UNSIGNED and f"tag {TAG}" in detail and "`sig`" in detail
    assert result.accepted == []


def test_missing_seq_is_missing_seq() -> None:
    obj = fix(T0, at_distance(100, 300))
    result = process(signed_pipeline(), signing.sign(obj, KEY))
    reason, detail, _ = only_rejection(result)
    assert reason == MISSING_SEQ and f"tag {TAG}" in detail and "seq" in detail
    assert result.accepted == []


def test_a_tag_without_a_key_is_unsigned_and_says_so() -> None:
    pipe = signed_pipeline(tags=(TAG, "T-2"))
    result = process(pipe, at(0, key=KEY), tag="T-2")
    assert len(result.rejected) == 1
    rejection = result.rejected[0].rejection
    assert result.rejected[0].source == "T-2"
    assert rejection.reason == UNSIGNED and "no key for tag T-2" in rejection.detail
    assert result.accepted == []


def test_the_same_seq_again_is_replayed() -> None:
    pipe = signed_pipeline()
    first = at(7)
    assert process(pipe, first).rejected == []
    result = process(pipe, first)  # the captured message, sent again
    reason, detail, _ = only_rejection(result)
    assert reason == REPLAYED and f"tag {TAG}" in detail and "seq 7" in detail
    assert "already accepted" in detail
    # a new signature over a new ts does not help: the seq was used
    again = signing.sign({**first, "ts": first["ts"] + 1}, KEY)
    assert only_rejection(process(pipe, again))[0] == REPLAYED
    assert result.accepted == [] and result.duplicates == 0


def test_a_seq_below_the_window_is_replayed_but_a_backlog_inside_it_is_accepted() -> None:
    pipe = signed_pipeline()
    top = 200
    assert process(pipe, at(top)).rejected == []
    backlog = process(pipe, [at(top - DEFAULT_WINDOW + 1), at(top - 1)])
    assert backlog.rejected == [] and accepted_seqs(backlog) == [top - 63, top - 1]
    result = process(pipe, at(top - DEFAULT_WINDOW))
    reason, detail, _ = only_rejection(result)
    assert reason == REPLAYED and f"seq {top - DEFAULT_WINDOW}" in detail
    assert f"last accepted seq {top}" in detail


def test_a_batch_with_one_bad_signature_rejects_only_that_fix() -> None:
    pipe = signed_pipeline()
    bad = {**at(1, -20), "acc": 3.0}  # better accuracy claimed after signing
    result = process(pipe, [at(0, -20), bad, at(2, -20)])
    reason, detail, payload = only_rejection(result)
    assert reason == BAD_SIGNATURE and "fix 2 of 3" in detail and "seq 1" in detail
    assert orjson.loads(payload) == bad
    assert accepted_seqs(result) == [0, 2]
    assert [(r.type, r.confidence) for r in without_protection(result.records)] == [
        ("zone.breach", "probable"),
        ("zone.breach", "confirmed"),
    ]


def test_a_batch_is_checked_against_the_seq_from_before_it() -> None:
    # A backlog whose order inside the array does not follow seq is accepted whole.
    pipe = signed_pipeline()
    assert process(pipe, at(10)).rejected == []
    result = process(pipe, [at(13), at(11), at(12)])
    assert result.rejected == [] and sorted(accepted_seqs(result)) == [11, 12, 13]


def test_replay_is_refused_after_a_restart_from_the_checkpoints() -> None:
    before = signed_pipeline()
    captured = at(3)
    for seq in (0, 1, 2):
        assert process(before, at(seq)).rejected == []
    assert process(before, captured).rejected == []
    checkpoints = before.checkpoints()

    after = signed_pipeline()
    after.restore(checkpoints)
    reason, detail, _ = only_rejection(process(after, captured))
    assert reason == REPLAYED and "seq 3" in detail
    assert accepted_seqs(process(after, at(4))) == [4]


def test_set_keys_turns_signing_on_and_off() -> None:
    pipe = signed_pipeline(keys=None)
    assert accepted_seqs(process(pipe, at(0, key=None))) == [0]
    pipe.set_keys(KEYS)
    assert only_rejection(process(pipe, at(1, key=None)))[0] == UNSIGNED
    assert accepted_seqs(process(pipe, at(1))) == [1]
    pipe.set_keys(None)
    assert accepted_seqs(process(pipe, at(2, key=None))) == [2]


# -- what the wire decoder still decides ---------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_utf8"),
        (b"[]", "empty_batch"),
        (b"42", "not_object"),
    ],
)
def test_unreadable_payloads_keep_the_decoders_reason(payload: bytes, reason: str) -> None:
    result = signed_pipeline().process([Inbound(TOPICS.tag_fix(TAG), payload)])
    assert [r.rejection.reason for r in result.rejected] == [reason]


def test_a_signed_fix_the_decoder_refuses_gets_the_decoders_reason() -> None:
    obj = signing.sign({**at(0, key=None), "lat": 95.0}, KEY)
    reason, _, _ = only_rejection(process(signed_pipeline(), obj))
    assert reason == "out_of_range"


def test_json_only_the_standard_library_reads_is_still_checked() -> None:
    # orjson refuses an integer over 64 bits; the wire decoder reads it and ignores
    # the unknown member, so the fix must not slip past the signature check.
    text = orjson.dumps(at(0, key=None))[:-1] + b',"pad":' + str(2**70).encode() + b"}"
    result = signed_pipeline().process([Inbound(TOPICS.tag_fix(TAG), text)])
    assert [r.rejection.reason for r in result.rejected] == [UNSIGNED]
    assert result.accepted == []


# -- victim devices ------------------------------------------------------------------------


def test_a_victim_device_without_a_key_is_not_checked() -> None:
    pipe = signed_pipeline()
    result = pipe.process([victim_msg(fix(T0, at_distance(100, 500)))])
    assert result.rejected == []


def test_a_victim_device_with_a_key_must_sign() -> None:
    pipe = signed_pipeline(keys={**KEYS, DEVICE: DEVICE_KEY})
    position = fix(T0, at_distance(100, 500), seq=1)
    result = pipe.process([victim_msg(position), victim_msg(signing.sign(position, KEY))])
    assert [(r.source, r.rejection.reason) for r in result.rejected] == [
        (DEVICE, UNSIGNED),
        (DEVICE, BAD_SIGNATURE),
    ]
    assert all(f"device {DEVICE}" in r.rejection.detail for r in result.rejected)
    assert pipe.process([victim_msg(signing.sign(position, DEVICE_KEY))]).rejected == []


def test_a_deeply_nested_signed_fix_is_too_deep_and_the_next_fix_still_counts() -> None:
    # 500 levels: signing._write (the canonical form) recursed over it and raised
    # RecursionError out of process(), failing the whole batch (issue 16.1)
    obj = at(0, key=None)
    text = orjson.dumps({**obj, "sig": "0" * 64})[:-1] + b',"x":' + b"[" * 500 + b"]" * 500
    pipe = signed_pipeline()
    result = pipe.process([Inbound(TOPICS.tag_fix(TAG), text + b"}"), tag_msg(at(1))])
    assert [r.rejection.reason for r in result.rejected] == ["too_deep"]
    assert [f.seq for f, _ in result.accepted] == [1]
