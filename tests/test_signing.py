"""Signed fixes (tagwatch.signing): the scheme, each rejection reason, key files."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tagwatch.signing import (
    BAD_SIGNATURE,
    DEFAULT_WINDOW,
    KEYS_ENV,
    MISSING_SEQ,
    REPLAYED,
    UNSIGNED,
    KeyFileError,
    canonical_bytes,
    keys_from_env,
    load_keys,
    sign,
    verify,
)

KEY = bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
OTHER_KEY = bytes(range(32))
FIX = {"tag": "T-1001", "ts": "2026-11-28T10:15:30Z", "lat": 51.50721, "lon": -0.12761,
       "acc": 8.0, "seq": 42, "fix": "gnss", "bat": 77}


def signed(**changes: object) -> dict:
    return sign({**FIX, **changes}, KEY)


# ---------------------------------------------------------------- canonical form


def test_canonical_bytes_sort_members_drop_sig_and_write_jcs_numbers() -> None:
    fix = {"ts": "2026-11-28T10:15:30Z", "seq": 7, "lat": 51.5, "lon": -0.12, "acc": 8.0,
           "sig": "ff" * 32}
    assert canonical_bytes(fix) == (
        b'{"acc":8,"lat":51.5,"lon":-0.12,"seq":7,"ts":"2026-11-28T10:15:30Z"}'
    )


def test_canonical_numbers_match_the_rfc_8785_example() -> None:
    # RFC 8785 section 3.2.2 example input, parsed as a device's JSON would be.
    text = '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001]}'
    parsed = json.loads(text)
    assert canonical_bytes(parsed) == b'{"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27]}'


@pytest.mark.parametrize(
    ("number", "text"),
    [(1e21, "1e+21"), (1e20, "100000000000000000000"), (1e-7, "1e-7"), (1e-6, "0.000001"),
     (0.00001, "0.00001"), (-0.0, "0"), (-1.5, "-1.5"), (123.0, "123"), (5e-324, "5e-324"),
     (2**63 - 1, "9223372036854775807")],
)
def test_canonical_number_forms(number: float, text: str) -> None:
    assert canonical_bytes({"n": number}) == b'{"n":' + text.encode() + b"}"


def test_canonical_strings_escape_like_jcs_and_keep_unicode_raw() -> None:
    assert canonical_bytes({"s": 'é"\\\n\x01\x7f€'}) == (
        '{"s":"é\\"\\\\\\n\\u0001\x7f€"}'.encode()
    )


def test_member_order_whitespace_and_number_spelling_do_not_matter() -> None:
    sent = signed()
    respelled = json.loads(
        '{ "seq" : 42, "bat": 77.0, "acc": 8, "fix": "gnss", "lon": -1.2761e-1,'
        ' "lat": 51.507210, "ts": "2026-11-28T10:15:30Z", "tag": "T-1001",'
        f' "sig": "{sent["sig"]}" }}'
    )
    assert verify(respelled, KEY, None, DEFAULT_WINDOW) is None


def test_signature_is_hmac_sha256_of_the_canonical_bytes() -> None:
    # What a device implementer can check their firmware against.
    fix = {"seq": 1, "ts": 1764324930, "lat": 51.5, "lon": -0.1}
    body = b'{"lat":51.5,"lon":-0.1,"seq":1,"ts":1764324930}'
    assert sign(fix, KEY)["sig"] == hmac.new(KEY, body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- verify


def test_valid_fix_is_accepted() -> None:
    assert verify(signed(), KEY, None, DEFAULT_WINDOW) is None
    assert verify(signed(), KEY, 41, 0) is None


def test_upper_case_hex_signature_is_accepted() -> None:
    fix = signed()
    assert verify({**fix, "sig": fix["sig"].upper()}, KEY, None, 0) is None


@pytest.mark.parametrize(
    "tamper",
    [{"lat": 51.50722}, {"lon": -0.12762}, {"ts": "2026-11-28T10:15:31Z"}, {"seq": 43},
     {"tag": "T-1002"}, {"strap": "ok"}, {"bat": 78}],
    ids=lambda t: next(iter(t)),
)
def test_tampered_fix_is_bad_signature(tamper: dict) -> None:
    fix = {**signed(), **tamper}
    assert verify(fix, KEY, None, DEFAULT_WINDOW) == BAD_SIGNATURE


def test_removed_member_is_bad_signature() -> None:
    fix = signed()
    del fix["bat"]
    assert verify(fix, KEY, None, DEFAULT_WINDOW) == BAD_SIGNATURE


def test_wrong_key_is_bad_signature() -> None:
    assert verify(signed(), OTHER_KEY, None, DEFAULT_WINDOW) == BAD_SIGNATURE


@pytest.mark.parametrize("sig", ["", "abc", "zz" * 32, 42, None])
def test_malformed_signature(sig: object) -> None:
    fix = {**signed(), "sig": sig}
    expected = UNSIGNED if sig is None else BAD_SIGNATURE
    assert verify(fix, KEY, None, DEFAULT_WINDOW) == expected


def test_missing_signature_is_unsigned() -> None:
    assert verify(dict(FIX), KEY, None, DEFAULT_WINDOW) == UNSIGNED


@pytest.mark.parametrize("seq", [None, "42", 4.2, -1, True])
def test_missing_or_invalid_seq_is_missing_seq(seq: object) -> None:
    fix = {k: v for k, v in FIX.items() if k != "seq"}
    if seq is not None:
        fix["seq"] = seq
    assert verify(sign(fix, KEY), KEY, None, DEFAULT_WINDOW) == MISSING_SEQ


def test_not_finite_value_is_bad_signature() -> None:
    fix = {**signed(), "spd": float("nan")}
    assert verify(fix, KEY, None, DEFAULT_WINDOW) == BAD_SIGNATURE


def test_replayed_fix_is_refused() -> None:
    fix = signed(seq=42)
    assert verify(fix, KEY, 42, 0) == REPLAYED
    assert verify(fix, KEY, 100, 10) == REPLAYED


def test_window_admits_late_backlog_but_not_older() -> None:
    # Live fix 100 got through first; the backlog 37..99 follows.
    assert verify(signed(seq=99), KEY, 100, DEFAULT_WINDOW) is None
    assert verify(signed(seq=100 - DEFAULT_WINDOW + 1), KEY, 100, DEFAULT_WINDOW) is None
    assert verify(signed(seq=100 - DEFAULT_WINDOW), KEY, 100, DEFAULT_WINDOW) == REPLAYED


def test_seen_seq_inside_the_window_is_replayed() -> None:
    assert verify(signed(seq=99), KEY, 100, DEFAULT_WINDOW, seen={98, 99, 100}) == REPLAYED


def test_forgery_is_bad_signature_even_when_also_stale() -> None:
    fix = {**signed(seq=1), "lat": 51.6}
    assert verify(fix, KEY, 100, 0) == BAD_SIGNATURE


# ---------------------------------------------------------------- property


@st.composite
def fixes(draw: st.DrawFn) -> dict:
    fix = {
        "tag": draw(st.from_regex(r"T-[0-9]{1,6}", fullmatch=True)),
        "ts": draw(st.one_of(st.integers(946684800, 4102444800),
                             st.floats(946684800, 4102444800, allow_nan=False))),
        "lat": draw(st.floats(-90, 90, allow_nan=False)),
        "lon": draw(st.floats(-180, 180, allow_nan=False)),
        "seq": draw(st.integers(0, 2**63 - 1)),
    }
    if draw(st.booleans()):
        fix["acc"] = draw(st.floats(0.1, 5000, allow_nan=False))
    if draw(st.booleans()):
        fix["note"] = draw(st.text(max_size=8))
    return fix


def _changed(byte: int, step: int) -> int:
    """A different byte; a digit becomes another digit."""
    if 48 <= byte <= 57:
        return 48 + (byte - 48 + (step % 9 or 9)) % 10
    return (byte + step) % 256


# Small steps turn a digit into another digit and a letter into another letter, so most
# changed payloads still parse (the statistics show the share of "changed values").
@settings(max_examples=300)
@given(fix=fixes(), where=st.integers(min_value=0),
       step=st.one_of(st.integers(1, 9), st.integers(1, 255)))
def test_any_single_byte_change_to_a_signed_payload_is_refused(
    fix: dict, where: int, step: int
) -> None:
    payload = bytearray(json.dumps(sign(fix, KEY), ensure_ascii=False).encode())
    where %= len(payload)
    original = json.loads(payload)
    payload[where] = _changed(payload[where], step)
    try:
        changed = json.loads(bytes(payload))
    except ValueError:
        event("no longer JSON: the wire decoder refuses it")
        return
    if not isinstance(changed, dict):
        event("no longer an object")
        return
    if changed == original:
        event("same values (a different spelling of one number)")
        return
    if _same_signed_values(changed, original):
        event("the signature's hex in another letter case: the same signature")
        return
    event("changed values")
    assert verify(changed, KEY, None, DEFAULT_WINDOW) is not None


def _same_signed_values(changed: dict, original: dict) -> bool:
    """Hex digits are case-insensitive: an upper-cased letter in `sig` is no change."""
    rest = {k: v for k, v in changed.items() if k != "sig"}
    same_rest = rest == {k: v for k, v in original.items() if k != "sig"}
    sig = changed.get("sig")
    return same_rest and isinstance(sig, str) and sig.lower() == original["sig"]


# ---------------------------------------------------------------- keys


def test_load_keys_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tag-keys"
    path.write_text(f"# tag keys\n\nT-1001 {KEY.hex()}\nV-01   {OTHER_KEY.hex()}  # victim\n")
    assert load_keys(path) == {"T-1001": KEY, "V-01": OTHER_KEY}


def test_load_keys_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "T-1001").write_text(KEY.hex() + "\n")
    (tmp_path / ".swp").write_text("junk")
    assert load_keys(tmp_path) == {"T-1001": KEY}


@pytest.mark.parametrize(
    ("text", "message"),
    [("T-1 abc\n", "not hex"), ("T-1 0011\n", "at least 16"), ("T-1\n", "expected"),
     (f"T-1 {KEY.hex()}\nT-1 {KEY.hex()}\n", "second key"), (f"T/1 {KEY.hex()}\n", "device id")],
)
def test_bad_key_file_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tag-keys"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=message) as info:
        load_keys(path)
    assert str(path) in str(info.value)


def test_keys_from_env(tmp_path: Path) -> None:
    path = tmp_path / "tag-keys"
    path.write_text(f"T-1001 {KEY.hex()}\n")
    assert keys_from_env({}) is None
    assert keys_from_env({KEYS_ENV: str(path)}) == {"T-1001": KEY}
    with pytest.raises(KeyFileError, match=KEYS_ENV):
        keys_from_env({KEYS_ENV: str(tmp_path / "absent")})
