"""The wire contract: topics, fix decoding and rejections, outgoing messages (DESIGN 3.1, 3.2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tagwatch.wire import (
    MAX_TS,
    MIN_TS,
    REASONS,
    Fix,
    Rejection,
    Topics,
    _decode_slow,
    decode_fix,
    decode_payload,
    json_depth,
    rate_command,
    rejected_message,
    rfc3339,
    status_message,
    too_deep,
    warn_command,
)

NOW = 1_764_325_000.0  # 2025-11-28T10:16:40Z, the receiving clock of these tests
TAG = "T-1001"
DROP = object()  # marks a field to leave out of a fix built by `fix()`


def fix(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"tag": TAG, "ts": "2025-11-28T10:15:30Z", "lat": 51.50721,
                            "lon": -0.12761, "acc": 8.0, "seq": 17, "fix": "gnss"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


def enc(value: Any) -> bytes:
    return json.dumps(value).encode()


def decode(payload: bytes, received: float | None = NOW) -> tuple[list[Fix], list[Rejection]]:
    return decode_payload("tag", TAG, payload, received)


BIG_FIELD = "x" * 70_000

# (id, payload, reason, a word the detail must contain: the field, or what is wrong)
BAD_PAYLOADS: list[tuple[str, bytes, str, str]] = [
    ("non-utf8 bytes", b'{"ts": "\xff\xfe", "lat": 1, "lon": 1}', "not_utf8", "UTF-8"),
    ("not json", b"hello tagwatch", "not_json", "not JSON"),
    ("truncated json", b'{"ts": 1764325000, "lat": 51.5', "not_json", "not JSON"),
    ("empty payload", b"", "not_json", "not JSON"),
    ("utf-8 bom", b'\xef\xbb\xbf{"ts": 1764325000, "lat": 1, "lon": 1}', "not_json", "not JSON"),
    ("deep nesting", b"[" * 20_000 + b"]" * 20_000, "too_deep", "20000 levels"),
    ("NaN token", b'{"ts": 1764325000, "lat": NaN, "lon": 1.0}', "not_finite", "lat"),
    ("Infinity token", b'{"ts": Infinity, "lat": 1.0, "lon": 1.0}', "not_finite", "ts"),
    ("1e999", b'{"ts": 1764325000, "lat": 1.0, "lon": 1e999}', "not_finite", "lon"),
    ("null island", enc(fix(lat=0, lon=0.0)), "null_island", "lat 0 and lon 0"),
    ("lat 423", enc(fix(lat=423.0)), "out_of_range", "lat 423.0"),
    ("lat just below -90", enc(fix(lat=-90.0001)), "out_of_range", "lat -90.0001"),
    ("lon 200", enc(fix(lon=200)), "out_of_range", "lon 200"),
    ("1970 timestamp", enc(fix(ts=0)), "timestamp_too_old", "ts 0"),
    ("1999-12-31", enc(fix(ts="1999-12-31T23:59:59Z")), "timestamp_too_old", "ts '1999"),
    ("10 min ahead", enc(fix(ts=NOW + 600)), "timestamp_in_future", "ts"),
    ("10 min ahead, rfc3339", enc(fix(ts=rfc3339(NOW + 600))), "timestamp_in_future", "ts"),
    ("naive timestamp", enc(fix(ts="2025-11-28T10:15:30")), "naive_timestamp", "ts"),
    ("garbage timestamp", enc(fix(ts="yesterday")), "bad_timestamp", "ts 'yesterday'"),
    ("date-only timestamp", enc(fix(ts="2025-11-28")), "bad_timestamp", "ts"),
    ("numeric string ts", enc(fix(ts="1764325000")), "bad_timestamp", "ts"),
    ("bool ts", enc(fix(ts=True)), "wrong_type", "ts"),
    ("tag mismatch", enc(fix(tag="T-2002")), "tag_mismatch", "tag 'T-2002'"),
    ("tag not a string", enc(fix(tag=1001)), "wrong_type", "tag"),
    ("70 kB payload", enc(fix(note=BIG_FIELD)), "payload_too_large", "bytes"),
    ("5,000-fix batch", enc([{}] * 5000), "batch_too_large", "5000"),
    ("empty array", b"[ ]", "empty_batch", "empty array"),
    ("string lat", enc(fix(lat="51.5")), "wrong_type", "lat"),
    ("bool acc", enc(fix(acc=True)), "wrong_type", "acc"),
    ("acc 0", enc(fix(acc=0)), "out_of_range", "acc 0"),
    ("negative seq", enc(fix(seq=-1)), "out_of_range", "seq -1"),
    ("seq 3.0", enc(fix(seq=3.0)), "wrong_type", "seq"),
    ("seq over int64", enc(fix(seq=2**63)), "out_of_range", "seq"),
    ("bat 101", enc(fix(bat=101)), "out_of_range", "bat 101"),
    ("bat string", enc(fix(bat="full")), "wrong_type", "bat"),
    ("hdg 361", enc(fix(hdg=361)), "out_of_range", "hdg 361"),
    ("spd negative", enc(fix(spd=-0.5)), "out_of_range", "spd -0.5"),
    ("strap cut", enc(fix(strap="cut")), "out_of_range", "strap 'cut'"),
    ("fix wifi", enc(fix(fix="wifi")), "out_of_range", "fix 'wifi'"),
    ("fix number", enc(fix(fix=5)), "wrong_type", "fix"),
    ("number at top level", b"42", "not_object", "payload"),
    ("string at top level", b'"fix"', "not_object", "payload"),
    ("null at top level", b"null", "not_object", "payload"),
    ("array of a number", b"[7]", "not_object", "fix 1 of 1"),
    ("array of an array", enc([[fix()]]), "not_object", "fix 1 of 1"),
    ("missing ts", enc(fix(ts=DROP)), "missing_field", "ts"),
    ("null ts", enc(fix(ts=None)), "missing_field", "ts"),
    ("nested 1,000 deep", enc(fix(x=[])).replace(b"[]", b"[" * 1000 + b"]" * 1000), "too_deep",
     "1001 levels"),
    ("missing lat, fix gnss", enc(fix(lat=DROP)), "missing_field", "lat"),
    ("missing lon, fix lbs", enc(fix(lon=DROP, fix="lbs")), "missing_field", "lon"),
    ("fix none, lat without lon", enc(fix(lon=DROP, fix="none")), "missing_field", "lon"),
]


@pytest.mark.parametrize(("payload", "reason", "word"), [r[1:] for r in BAD_PAYLOADS],
                         ids=[r[0] for r in BAD_PAYLOADS])
def test_bad_payload_is_rejected_with_reason_and_field(payload: bytes, reason: str,
                                                       word: str) -> None:
    fixes, rejections = decode(payload)
    assert fixes == []
    assert [r.reason for r in rejections] == [reason], rejections
    rej = rejections[0]
    assert word in rej.detail
    text = payload.decode("utf-8", "replace")
    if rej.detail.startswith("fix 1 of "):  # one element of a batch: its own text
        assert rej.payload in text and rej.payload != text
    else:
        assert rej.payload == text[:1024]


def test_every_reason_code_is_produced_by_the_table() -> None:
    assert {r[2] for r in BAD_PAYLOADS} == REASONS


def test_every_problem_of_a_fix_is_named_and_the_first_is_the_reason() -> None:
    _, [rej] = decode(enc(fix(lat=423.0, acc=-1, strap="cut")))
    assert rej.reason == "out_of_range"
    assert all(word in rej.detail for word in ("lat 423.0", "acc -1", "strap 'cut'"))


def test_bad_fix_in_batch_rejects_only_that_fix_and_the_rest_come_sorted() -> None:
    bad_text = '{ "ts":1764324900,"lat": 423.0,\n "lon":1 }'
    payload = ("[" + enc(fix(ts=1764324930.0, seq=3)).decode() + ",\n  " + bad_text + " , "
               + enc(fix(ts=1764324910, seq=1)).decode() + ","
               + enc(fix(ts=1764324920.5, seq=2)).decode() + "]").encode()
    fixes, [rej] = decode(payload)
    assert [f.seq for f in fixes] == [1, 2, 3]
    assert [f.ts for f in fixes] == [1764324910.0, 1764324920.5, 1764324930.0]
    assert rej.reason == "out_of_range"
    assert rej.detail.startswith("fix 2 of 4: lat 423.0")
    assert rej.payload == bad_text


def test_every_element_of_an_array_of_numbers_is_rejected_on_its_own() -> None:
    fixes, rejections = decode(b"[1, 2.5, 3]")
    assert fixes == []
    assert [(r.reason, r.payload) for r in rejections] == [
        ("not_object", "1"), ("not_object", "2.5"), ("not_object", "3")]
    assert [r.detail.split(":")[0] for r in rejections] == ["fix 1 of 3", "fix 2 of 3",
                                                           "fix 3 of 3"]


def test_batch_sort_is_stable_for_equal_timestamps() -> None:
    fixes, _ = decode(enc([fix(ts=NOW - 5, seq=9), fix(ts=NOW - 9, seq=1),
                           fix(ts=NOW - 5, seq=4), fix(ts=NOW - 5, seq=2)]))
    assert [f.seq for f in fixes] == [1, 9, 4, 2]


def test_fix_none_without_position_is_accepted() -> None:
    [heartbeat], [] = decode(enc({"ts": NOW - 1, "fix": "none", "strap": "tamper", "bat": 3}))
    assert (heartbeat.lat, heartbeat.lon, heartbeat.fix) == (None, None, "none")
    assert (heartbeat.strap, heartbeat.bat, heartbeat.acc) == ("tamper", 3.0, 15.0)


def test_fix_none_with_position_is_validated() -> None:
    [kept], [] = decode(enc(fix(fix="none")))
    assert (kept.lat, kept.lon, kept.fix) == (51.50721, -0.12761, "none")
    _, [rej] = decode(enc(fix(fix="none", lat=91)))
    assert rej.reason == "out_of_range"
    _, [rej] = decode(enc(fix(fix="none", lat=0, lon=0)))
    assert rej.reason == "null_island"


def test_a_full_fix_decodes_to_every_field() -> None:
    payload = enc(fix(ts="2025-11-28T12:15:30.25+02:00", acc=4, spd=1.5, hdg=360, bat=0,
                      strap="ok", fix="lbs"))
    assert decode(payload) == ([Fix(tag=TAG, ts=1764324930.25, lat=51.50721, lon=-0.12761,
                                    acc=4.0, seq=17, fix="lbs", spd=1.5, hdg=360.0, bat=0.0,
                                    strap="ok", source="tag")], [])


def test_unknown_fields_are_ignored_and_null_means_absent() -> None:
    [f], [] = decode(enc(fix(firmware="2.1", cell={"mcc": 234}, bat=None, acc=None, fix=None)))
    assert (f.bat, f.acc, f.fix) == (None, 15.0, "gnss")


def test_victim_source_and_id() -> None:
    [f], [] = decode_payload("victim", "V-01", enc(fix(tag=DROP)), NOW)
    assert (f.source, f.tag) == ("victim", "V-01")
    _, [rej] = decode_payload("victim", "V-01", enc(fix(tag="V-02")), NOW)
    assert rej.reason == "tag_mismatch"


def test_timestamp_bounds() -> None:
    assert decode(enc(fix(ts=MIN_TS)))[0]
    assert decode(enc(fix(ts="2000-01-01T00:00:00Z")))[0]
    assert decode(enc(fix(ts=NOW + 120)))[0]
    assert decode(enc(fix(ts=NOW + 120.01)))[1][0].reason == "timestamp_in_future"
    assert decode_payload("tag", TAG, enc(fix(ts=NOW)), NOW, max_future_s=-1.0)[1]


def test_no_receiving_clock_skips_the_future_check_up_to_year_9999() -> None:
    assert decode(enc(fix(ts="2100-01-01T00:00:00Z")), received=None)[0]
    _, [rej] = decode(enc(fix(ts=MAX_TS + 1)), received=None)
    assert rej.reason == "timestamp_in_future"
    assert "9999" in rej.detail


def test_rejection_payload_is_cut_at_1024_characters_with_replacement_chars() -> None:
    payload = enc(fix(lat=423.0, note="é" * 3000)).replace(b'"lon"', b'"\xff"')
    _, [rej] = decode(payload)
    assert len(rej.payload) == 1024
    assert rej.payload == payload.decode("utf-8", "replace")[:1024]
    assert "\ufffd" in rej.payload
    _, [rej] = decode(enc([fix(lat=423.0, note="x" * 3000)]))
    assert len(rej.payload) == 1024 and rej.payload.startswith('{"tag"')


def test_rejected_message_round_trips_with_the_four_keys() -> None:
    _, [rej] = decode(enc(fix(tag="\ud800", note="\u2603")))  # lone surrogate in a detail
    message = json.loads(rejected_message(rej, NOW + 0.5))
    assert list(message) == ["reason", "detail", "received", "payload"]
    assert message == {"reason": "tag_mismatch", "detail": rej.detail,
                       "received": "2025-11-28T10:16:40.5Z", "payload": rej.payload}


def test_decoder_accepts_buffers_other_than_bytes() -> None:
    payload = enc(fix())
    assert decode(bytearray(payload)) == decode(memoryview(payload)) == decode(payload)


# ---------------------------------------------------------------- outgoing messages, topics


@pytest.mark.parametrize(("ts", "text"), [
    (0, "1970-01-01T00:00:00Z"),
    (1764324930, "2025-11-28T10:15:30Z"),
    (1764324930.41, "2025-11-28T10:15:30.41Z"),
    (1764324930.4056, "2025-11-28T10:15:30.406Z"),
    (1764324930.9996, "2025-11-28T10:15:31Z"),
    (-0.5, "1969-12-31T23:59:59.5Z"),
    (MAX_TS, "9999-12-31T23:59:59Z"),
])
def test_rfc3339(ts: float, text: str) -> None:
    assert rfc3339(ts) == text


def test_rfc3339_refuses_non_finite() -> None:
    with pytest.raises(ValueError, match="inf"):
        rfc3339(float("inf"))


def test_command_and_status_messages() -> None:
    assert json.loads(warn_command("Leave now")) == {"cmd": "warn", "text": "Leave now"}
    assert json.loads(rate_command(5)) == {"cmd": "rate", "interval_s": 5}
    assert json.loads(status_message("online", "tw-1", NOW)) == {
        "state": "online", "instance": "tw-1", "since": "2025-11-28T10:16:40Z"}
    for call in (lambda: warn_command(" "), lambda: rate_command(0),
                 lambda: rate_command(True), lambda: status_message("up", "tw-1", NOW)):
        with pytest.raises(ValueError):
            call()


def test_topics_builders_and_filters() -> None:
    t = Topics()
    assert t.fix_filters == ("tagwatch/v1/tags/+/fix", "tagwatch/v1/victims/+/fix")
    assert t.alerts("C-0001") == "tagwatch/v1/alerts/C-0001"
    assert t.rejected(TAG) == "tagwatch/v1/rejected/T-1001"
    assert t.cmd(TAG) == "tagwatch/v1/tags/T-1001/cmd"
    assert t.status == "tagwatch/v1/status"
    assert Topics("acme/tw/v2").tag_fix("T-9") == "acme/tw/v2/tags/T-9/fix"
    for bad_id in ("", "a/b", "+", "#"):
        with pytest.raises(ValueError, match="tag_id"):
            t.cmd(bad_id)
    for bad_prefix in ("", "/x", "x/", "a/+"):
        with pytest.raises(ValueError, match="prefix"):
            Topics(bad_prefix)


@pytest.mark.parametrize(("topic", "parsed"), [
    ("tagwatch/v1/tags/T-1001/fix", ("tag", "T-1001")),
    ("tagwatch/v1/victims/V-01/fix", ("victim", "V-01")),
    ("tagwatch/v1/tags/T-1001/cmd", None),
    ("tagwatch/v1/tags//fix", None),
    ("tagwatch/v1/tags/a/b/fix", None),
    ("tagwatch/v1/alerts/C-1", None),
    ("tagwatch/v1/status", None),
    ("tagwatch/v10/tags/T-1/fix", None),
    ("other/v1/tags/T-1/fix", None),
    ("tagwatch/v1", None),
])
def test_topics_parse(topic: str, parsed: tuple[str, str] | None) -> None:
    assert Topics().parse(topic) == parsed


def test_topics_parse_custom_prefix_round_trips() -> None:
    t = Topics("acme/tw/v2")
    assert t.parse(t.victim_fix("V-7")) == ("victim", "V-7")
    assert Topics().parse(t.tag_fix("T-1")) is None


# ---------------------------------------------------------------- properties

ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[Any, float]:
    """(wire value, expected Unix seconds)"""
    if draw(st.booleans()):
        moment = draw(st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2025, 11, 27),
                                   timezones=st.sampled_from(ZONES)))
        return moment.isoformat().replace("+00:00", "Z"), moment.timestamp()
    seconds = draw(st.integers(int(MIN_TS), int(NOW)) | st.floats(MIN_TS, NOW + 120))
    return seconds, float(seconds)


@st.composite
def valid_fixes(draw: st.DrawFn) -> tuple[dict[str, Any], Fix]:
    wire_ts, ts = draw(timestamps())
    kind = draw(st.sampled_from(["gnss", "lbs", "none", None]))
    wire: dict[str, Any] = {"ts": wire_ts}
    if kind is not None:
        wire["fix"] = kind
    if kind != "none" or draw(st.booleans()):
        wire["lat"] = draw(st.floats(-90, 90) | st.integers(-90, 90))
        wire["lon"] = draw(st.floats(-180, 180) | st.integers(-180, 180))
        assume(not (wire["lat"] == 0 and wire["lon"] == 0))
    optional = {
        "tag": st.just(TAG), "acc": st.floats(0, exclude_min=True, allow_infinity=False),
        "seq": st.integers(0, 2**63 - 1), "spd": st.floats(0, allow_infinity=False),
        "hdg": st.floats(0, 360), "bat": st.integers(0, 100) | st.floats(0, 100),
        "strap": st.sampled_from(["ok", "tamper"]), "firmware": st.text(),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            wire[name] = draw(strategy)

    def num(name: str) -> float | None:
        return None if name not in wire else float(wire[name])

    expected = Fix(TAG, ts, num("lat"), num("lon"), num("acc") or 15.0, wire.get("seq"),
                   kind or "gnss", num("spd"), num("hdg"), num("bat"), wire.get("strap"))
    return wire, expected


@settings(max_examples=300, deadline=None)
@given(valid_fixes())
def test_any_valid_fix_decodes_to_the_same_values(case: tuple[dict[str, Any], Fix]) -> None:
    wire, expected = case
    payload = enc(wire)
    assert decode(payload) == ([expected], [])
    assert _decode_slow("tag", TAG, payload, NOW, 120.0) == ([expected], [])
    assert decode_fix("tag", TAG, payload, NOW, 120.0) == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(valid_fixes(), min_size=1, max_size=30))
def test_any_valid_batch_decodes_sorted(cases: list[tuple[dict[str, Any], Fix]]) -> None:
    payload = enc([wire for wire, _ in cases])
    expected = sorted((f for _, f in cases), key=lambda f: f.ts)
    assert decode(payload) == (expected, [])


def check_never_raises(payload: bytes) -> None:
    """Every fix is either accepted or rejected with a known reason; fast and slow agree,
    and the pipeline's one-fix shortcut accepts nothing the decoder would not."""
    fixes, rejections = decode(payload)
    assert {r.reason for r in rejections} <= REASONS
    assert all(len(r.payload) <= 1024 for r in rejections)
    assert (fixes, rejections) == _decode_slow("tag", TAG, payload, NOW, 120.0)
    one = decode_fix("tag", TAG, payload, NOW, 120.0)
    assert one is None or (fixes, rejections) == ([one], [])
    for rej in rejections:
        json.loads(rejected_message(rej, NOW))
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return
    if isinstance(doc, list) and 0 < len(doc) <= 1000 and len(payload) <= 65536:
        assert len(fixes) + len(rejections) == len(doc)
    else:
        assert len(fixes) + len(rejections) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(payload: bytes) -> None:
    check_never_raises(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["tag", "ts", "lat", "lon", "acc", "seq", "fix", "spd", "hdg",
                               "bat", "strap"])
timestamp_like = st.sampled_from(["2025-11-28T10:15:30Z", "2025-11-28T10:15:30",
                                  "2025-13-28T10:15:30Z", "0001-01-01T00:00:00+01:00",
                                  "9999-12-31T23:59:59-23:59", "\ud800"])
fix_like = st.builds(
    lambda base, extra: {**base, **extra},
    valid_fixes().map(lambda case: case[0]),
    st.dictionaries(field_names, json_values | timestamp_like, max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | fix_like | st.lists(fix_like | json_values, max_size=5))
def test_random_json_never_raises(doc: Any) -> None:
    check_never_raises(enc(doc))


# ---------------------------------------------------------------- nesting depth (issue 16.1)


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """A fix whose member `x` holds arrays nested so the payload is `depth` levels deep."""
    return b'{"ts": %d, "lat": 51.5, "lon": -0.12, "x": ' % NOW + (
        b"[" * (depth - 1) + inner + b"]" * (depth - 1) + b"}")


def test_depth_limit_is_32_levels_and_rejected_before_any_recursive_decoder() -> None:
    assert json_depth(nested(32)) == 32 and not too_deep(nested(32))
    assert decode(nested(32))[0] and decode_fix("tag", "T-1001", nested(32), NOW, 120.0)
    fixes, [rej] = decode(nested(33))
    assert fixes == [] and rej.reason == "too_deep" and "33 levels" in rej.detail
    # 100,000 levels: msgspec and the json module both raise RecursionError on this
    deep = nested(32_000)
    assert [r.reason for r in decode(deep)[1]] == ["too_deep"]
    assert decode_fix("tag", "T-1001", deep, NOW, 120.0) is None
    assert [r.reason for r in decode(b"{" * 40_000)[1]] == ["too_deep"]  # not even JSON


def test_depth_counts_brackets_outside_strings_only() -> None:
    inside = b'"' + b"[{" * 40 + b'\\\"[[' + b'"'  # escaped quote and backslash inside
    assert json_depth(b'{"a": ' + inside + b"}") == 1
    payload = enc(fix(note="[" * 500 + "{" * 500))
    assert not too_deep(payload) and decode(payload)[0]
    batch = enc([fix(ts=NOW - i) for i in range(500)])  # a buffered upload: depth 2
    assert json_depth(batch) == 2 and len(decode(batch)[0]) == 500
