"""The MQTT wire contract of tagwatch (DESIGN 3.1 topics, 3.2 fix object).

`decode_payload` is on the hot path. It tries a fast path first: one msgspec
typed decode of the whole payload plus a few checks msgspec cannot express.
Anything the fast path does not like, for whatever reason, is handed whole to
the slow path, which alone decides what is accepted and why something is
rejected. The fast path is therefore only an optimisation: for every payload
both give the same answer (tests/test_wire.py checks this property).

Decisions where DESIGN 3.2 is silent:
- JSON `null` in any field means the field is absent (firmware that sends
  `"bat": null` for "unknown" must not lose a fix); a required field that is
  null is `missing_field`.
- With `"fix": "none"`, `lat` and `lon` are optional but come as a pair.
- Timestamps are RFC 3339 as msgspec parses them (a space or lower-case `t`
  is accepted as the separator; no leap second `:60`). A timestamp after
  9999-12-31T23:59:59Z is `timestamp_in_future` even when there is no
  receiving clock, so every accepted `ts` can be written as RFC 3339.
- `seq` must fit a signed 64-bit integer (it is stored in the case record).
- The slow path parses with the standard library, which lets the non-JSON
  tokens `NaN` and `Infinity` through, so they are reported as `not_finite`
  naming the field rather than as `not_json`.
- One rejection carries one reason (the first problem found, in field order
  tag, ts, fix, lat, lon, acc, seq, spd, hdg, bat, strap); its detail lists
  every problem of that fix, separated by "; ".
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

Source = Literal["tag", "victim"]

MAX_PAYLOAD_BYTES = 65536
MAX_BATCH = 1000
MAX_DEPTH = 32  # JSON nesting levels (a fix object is 1, a batch of them 2)
PAYLOAD_EXCERPT_CHARS = 1024
DEFAULT_PREFIX = "tagwatch/v1"
MIN_TS = 946684800.0  # 2000-01-01T00:00:00Z: before it is GPS week rollover or epoch zero
MAX_TS = 253402300799.0  # 9999-12-31T23:59:59Z: the last instant RFC 3339 can write
_MAX_SEQ = 2**63 - 1

REASONS = frozenset(
    {
        "payload_too_large",
        "not_utf8",
        "not_json",
        "not_object",
        "empty_batch",
        "batch_too_large",
        "missing_field",
        "wrong_type",
        "bad_timestamp",
        "naive_timestamp",
        "timestamp_too_old",
        "timestamp_in_future",
        "not_finite",
        "out_of_range",
        "null_island",
        "tag_mismatch",
        "too_deep",
    }
)


# ---------------------------------------------------------------- topics


class Topics:
    """Topic names and filters of DESIGN 3.1 under one prefix."""

    __slots__ = ("_fix_heads", "prefix", "status", "tag_fixes", "victim_fixes")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(
                f"topic prefix {prefix!r} must be non-empty without a leading or trailing '/'"
            )
        if "+" in prefix or "#" in prefix or "\x00" in prefix:
            raise ValueError(f"topic prefix {prefix!r} must not contain '+', '#' or NUL")
        self.prefix = prefix
        self.tag_fixes = f"{prefix}/tags/+/fix"
        self.victim_fixes = f"{prefix}/victims/+/fix"
        self.status = f"{prefix}/status"
        self._fix_heads: dict[str, Source] = {"tags": "tag", "victims": "victim"}

    @property
    def fix_filters(self) -> tuple[str, str]:
        """Both subscription filters for incoming fixes."""
        return (self.tag_fixes, self.victim_fixes)

    def tag_fix(self, tag_id: str) -> str:
        return f"{self.prefix}/tags/{_topic_level('tag_id', tag_id)}/fix"

    def victim_fix(self, device_id: str) -> str:
        return f"{self.prefix}/victims/{_topic_level('device_id', device_id)}/fix"

    def alerts(self, case_id: str) -> str:
        return f"{self.prefix}/alerts/{_topic_level('case_id', case_id)}"

    def rejected(self, tag_id: str) -> str:
        return f"{self.prefix}/rejected/{_topic_level('tag_id', tag_id)}"

    def cmd(self, tag_id: str) -> str:
        return f"{self.prefix}/tags/{_topic_level('tag_id', tag_id)}/cmd"

    def parse(self, topic: str) -> tuple[Source, str] | None:
        """("tag", id) or ("victim", id) for a fix topic under this prefix, else None."""
        prefix = self.prefix
        if not topic.startswith(prefix) or topic[len(prefix) : len(prefix) + 1] != "/":
            return None
        parts = topic[len(prefix) + 1 :].split("/")
        if len(parts) != 3 or parts[2] != "fix" or not parts[1]:
            return None
        kind = self._fix_heads.get(parts[0])
        if kind is None or "+" in parts[1] or "#" in parts[1]:
            return None
        return kind, parts[1]


def _topic_level(name: str, value: str) -> str:
    # an id with '/' or a wildcard would address some other topic
    if not value or any(c in value for c in "/+#\x00"):
        raise ValueError(f"{name} {value!r} cannot be a topic level (empty, or has / + # NUL)")
    return value


# ---------------------------------------------------------------- messages


class Fix(msgspec.Struct, frozen=True, gc=False):
    """One accepted fix. `tag` is the topic's id (the victim device id when source is victim)."""

    tag: str
    ts: float  # event time, Unix seconds
    lat: float | None  # None only when fix == "none" and no position was sent
    lon: float | None
    acc: float = 15.0
    seq: int | None = None
    fix: str = "gnss"  # "gnss" | "lbs" | "none"
    spd: float | None = None
    hdg: float | None = None
    bat: float | None = None
    strap: str | None = None  # "ok" | "tamper" | None
    source: str = "tag"  # "tag" | "victim"


class Rejection(msgspec.Struct, frozen=True, gc=False):
    reason: str  # one of REASONS: a metrics label
    detail: str  # one sentence naming the field and the value
    payload: str  # offending text, replacement chars for bad UTF-8, at most 1,024 chars


def rfc3339(ts: float) -> str:
    """UTC RFC 3339 with Z, rounded to the millisecond; the fraction has its trailing
    zeros dropped and is left out when zero: 10:15:30Z, 10:15:30.41Z, 10:15:30.405Z."""
    if not math.isfinite(ts):
        raise ValueError(f"timestamp {ts!r} is not a finite number of Unix seconds")
    seconds, millis = divmod(round(ts * 1000), 1000)
    text = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if millis:
        text += f".{millis:03d}".rstrip("0")
    return text + "Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_rfc3339(text: str) -> float:
    """Unix seconds of an RFC 3339 time with an offset or Z; ValueError otherwise."""
    text = text.strip()
    if text[-1:] == "z":  # RFC 3339 allows a lower-case z
        text = text[:-1] + "Z"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return moment.timestamp()


def rejected_message(rej: Rejection, received: float) -> bytes:
    """Payload for {prefix}/rejected/{tag_id}."""
    return msgspec.json.encode(
        {
            "reason": rej.reason,
            "detail": rej.detail,
            "received": rfc3339(received),
            "payload": rej.payload,
        }
    )


def warn_command(text: str) -> bytes:
    """Payload for {prefix}/tags/{tag_id}/cmd: the tag vibrates or speaks `text`."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"warn command text {text!r} must be a non-empty string")
    return msgspec.json.encode({"cmd": "warn", "text": text})


def rate_command(interval_s: int) -> bytes:
    """Payload for {prefix}/tags/{tag_id}/cmd: report every `interval_s` seconds."""
    if type(interval_s) is not int or interval_s <= 0:
        raise ValueError(f"rate command interval_s {interval_s!r} must be a positive integer")
    return msgspec.json.encode({"cmd": "rate", "interval_s": interval_s})


def status_message(state: Literal["online", "offline"], instance: str, since: float) -> bytes:
    """Retained payload for {prefix}/status (also the last will, with state offline)."""
    if state not in ("online", "offline"):
        raise ValueError(f"status state {state!r} must be 'online' or 'offline'")
    return msgspec.json.encode({"state": state, "instance": instance, "since": rfc3339(since)})


# ---------------------------------------------------------------- decoding: fast path

_Lat = Annotated[float, Meta(ge=-90.0, le=90.0)]
_Lon = Annotated[float, Meta(ge=-180.0, le=180.0)]
_AwareTime = Annotated[datetime, Meta(tz=True)]


class _WireFix(msgspec.Struct, gc=False):
    # Valid input only; anything msgspec refuses goes to the slow path. msgspec
    # already refuses NaN tokens, 1e999 (out of range), bools as numbers and 3.0 as int.
    ts: float | _AwareTime
    lat: _Lat | None = None
    lon: _Lon | None = None
    acc: Annotated[float, Meta(gt=0.0)] | None = None
    seq: Annotated[int, Meta(ge=0, le=_MAX_SEQ)] | None = None
    fix: Literal["gnss", "lbs", "none"] | None = None
    spd: Annotated[float, Meta(ge=0.0)] | None = None
    hdg: Annotated[float, Meta(ge=0.0, le=360.0)] | None = None
    bat: Annotated[float, Meta(ge=0.0, le=100.0)] | None = None
    strap: Literal["ok", "tamper"] | None = None
    tag: str | None = None


_FAST = msgspec.json.Decoder(_WireFix | list[_WireFix])
_FAST_ONE = msgspec.json.Decoder(_WireFix)
_BY_TS = attrgetter("ts")


def decode_payload(
    source: Source,
    device_id: str,
    payload: bytes,
    received: float | None,
    max_future_s: float = 120.0,
) -> tuple[list[Fix], list[Rejection]]:
    """Accepted fixes (a batch sorted by ts) and rejections of one MQTT fix payload.

    `received` is the receiving clock in Unix seconds; None skips the future check
    (replay of captures without one). Never raises for any payload.
    """
    if type(payload) is not bytes:
        payload = bytes(payload)
    if len(payload) <= MAX_PAYLOAD_BYTES and not too_deep(payload):
        fixes = _decode_fast(source, device_id, payload, _limit(received, max_future_s))
        if fixes is not None:
            return fixes, []
    return _decode_slow(source, device_id, payload, received, max_future_s)


def decode_fix(
    source: Source, device_id: str, payload: bytes, received: float | None, max_future_s: float
) -> Fix | None:
    """The fix of a payload that is one valid fix object, else None.

    The pipeline's shortcut for the common message: None says nothing about why,
    and the caller then hands the payload to `decode_payload`, which decides.
    Whenever this returns a fix, `decode_payload` would accept exactly that one.
    """
    if type(payload) is not bytes or len(payload) > MAX_PAYLOAD_BYTES:
        return None
    if payload.count(b"[") + payload.count(b"{") > MAX_DEPTH and too_deep(payload):
        return None  # (too_deep's first test inlined: this is the hot path)
    try:
        wire = _FAST_ONE.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # also an array: decode_payload takes it
    return _fast_fix(wire, source, device_id, _limit(received, max_future_s))


def too_deep(payload: bytes) -> bool:
    """Whether the JSON text nests arrays and objects deeper than MAX_DEPTH levels.

    Checked before any recursive code reads a payload (msgspec, the json module and the
    signature's canonical form all recurse, and a few KB of brackets exhaust the stack).
    Iterative and cheap: a payload with at most MAX_DEPTH brackets is answered by two
    C-speed counts; only the rest have their strings cut out and their brackets summed.
    Brackets of text that is not JSON count too: such a payload is rejected either way.
    """
    if payload.count(b"[") + payload.count(b"{") <= MAX_DEPTH:
        return False
    return json_depth(payload) > MAX_DEPTH


def json_depth(payload: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, without parsing it."""
    skeleton = _STRINGS.sub(b"", payload).translate(None, _NOT_BRACKETS)
    if not skeleton:
        return 0
    steps = np.frombuffer(skeleton, dtype=np.uint8)
    return int(np.cumsum(np.where((steps == 0x5B) | (steps == 0x7B), 1, -1)).max())


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # JSON strings, escapes too
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _limit(received: float | None, max_future_s: float) -> float:
    return MAX_TS if received is None else min(MAX_TS, received + max_future_s)


def _decode_fast(source: str, device_id: str, payload: bytes, limit: float) -> list[Fix] | None:
    """The fixes when everything is valid, None when anything is not (slow path decides)."""
    try:
        decoded = _FAST.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if type(decoded) is not list:
        fix = _fast_fix(decoded, source, device_id, limit)
        return None if fix is None else [fix]
    if not decoded or len(decoded) > MAX_BATCH:
        return None
    fixes = []
    for wire in decoded:
        fix = _fast_fix(wire, source, device_id, limit)
        if fix is None:
            return None
        fixes.append(fix)
    fixes.sort(key=_BY_TS)
    return fixes


def _fast_fix(w: _WireFix, source: str, device_id: str, limit: float) -> Fix | None:
    ts = w.ts
    if type(ts) is not float:
        ts = ts.timestamp()
    if not MIN_TS <= ts <= limit:
        return None
    lat, lon, kind = w.lat, w.lon, w.fix or "gnss"
    if lat is None or lon is None:
        if kind != "none" or lat is not lon:
            return None
    elif lat == 0.0 and lon == 0.0:
        return None
    if w.tag is not None and w.tag != device_id:
        return None
    acc = 15.0 if w.acc is None else w.acc
    return Fix(device_id, ts, lat, lon, acc, w.seq, kind, w.spd, w.hdg, w.bat, w.strap, source)


# ---------------------------------------------------------------- decoding: slow path

_JSON = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace, as the json module skips it
_Problems = list[tuple[str, str]]
_BAD = object()  # a field that is present but invalid (its problem is recorded)


def _decode_slow(
    source: str, device_id: str, payload: bytes, received: float | None, max_future_s: float
) -> tuple[list[Fix], list[Rejection]]:
    """The reference decoder: decides every acceptance and every rejection reason."""
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        return [], [
            _whole(
                payload,
                "payload_too_large",
                f"payload is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
            )
        ]
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [
            _whole(payload, "not_utf8", f"payload is not UTF-8: {exc.reason} at byte {exc.start}")
        ]
    if too_deep(payload):
        depth = json_depth(payload)
        return [], [
            _whole(
                payload,
                "too_deep",
                f"payload nests arrays or objects {depth} levels deep, over the "
                f"{MAX_DEPTH}-level limit",
            )
        ]
    try:
        doc = _JSON.decode(text)
    except (ValueError, RecursionError) as exc:
        return [], [_whole(payload, "not_json", f"payload is not JSON: {_clip(str(exc))}")]
    limit = _limit(received, max_future_s)
    if isinstance(doc, dict):
        result = _check_fix(doc, source, device_id, limit, received)
        if isinstance(result, Fix):
            return [result], []
        return [], [_whole(payload, result[0][0], "; ".join(d for _, d in result))]
    if not isinstance(doc, list):
        return [], [
            _whole(
                payload,
                "not_object",
                f"payload is {_described(doc)}, not a fix object or an array of fix objects",
            )
        ]
    return _check_batch(doc, text, payload, source, device_id, limit, received)


def _check_batch(
    doc: list[Any],
    text: str,
    payload: bytes,
    source: str,
    device_id: str,
    limit: float,
    received: float | None,
) -> tuple[list[Fix], list[Rejection]]:
    total = len(doc)
    if total == 0:
        return [], [
            _whole(
                payload, "empty_batch", "payload is an empty array: a batch needs at least one fix"
            )
        ]
    if total > MAX_BATCH:
        return [], [
            _whole(
                payload,
                "batch_too_large",
                f"batch of {total} fixes is over the {MAX_BATCH}-fix limit",
            )
        ]
    fixes: list[Fix] = []
    rejections: list[Rejection] = []
    texts: list[str] | None = None
    for n, element in enumerate(doc, 1):
        if isinstance(element, dict):
            result = _check_fix(element, source, device_id, limit, received)
        else:
            result = [("not_object", f"element is {_described(element)}, not a fix object")]
        if isinstance(result, Fix):
            fixes.append(result)
            continue
        texts = texts if texts is not None else _element_texts(text)
        detail = f"fix {n} of {total}: " + "; ".join(d for _, d in result)
        rejections.append(Rejection(result[0][0], detail, texts[n - 1][:PAYLOAD_EXCERPT_CHARS]))
    fixes.sort(key=_BY_TS)
    return fixes, rejections


def _element_texts(text: str) -> list[str]:
    """Each element's own JSON text, for a text already known to be a valid JSON array."""
    texts = []
    i = _WS.match(text, _WS.match(text).end() + 1).end()  # past '['
    while text[i] != "]":
        _, end = _JSON.raw_decode(text, i)
        texts.append(text[i:end])
        i = _WS.match(text, end).end()
        if text[i] == ",":
            i = _WS.match(text, i + 1).end()
    return texts


def _whole(payload: bytes, reason: str, detail: str) -> Rejection:
    # 1,024 characters never need more than 4,096 bytes; no need to decode 64 KiB
    excerpt = payload[: 4 * PAYLOAD_EXCERPT_CHARS].decode("utf-8", "replace")
    return Rejection(reason, detail, excerpt[:PAYLOAD_EXCERPT_CHARS])


def _check_fix(
    obj: dict[str, Any], source: str, device_id: str, limit: float, received: float | None
) -> Fix | _Problems:
    problems: _Problems = []
    _check_tag(obj.get("tag"), device_id, problems)
    ts = _timestamp(obj.get("ts"), limit, received, problems)
    kind = _choice(obj, "fix", ("gnss", "lbs", "none"), problems)
    kind = "gnss" if kind is None else kind
    lat, lon = _position(obj, kind, problems)
    acc = _number(obj, "acc", problems, 0.0, math.inf, low_open=True)
    seq = _seq(obj.get("seq"), problems)
    spd = _number(obj, "spd", problems, 0.0, math.inf)
    hdg = _number(obj, "hdg", problems, 0.0, 360.0)
    bat = _number(obj, "bat", problems, 0.0, 100.0)
    strap = _choice(obj, "strap", ("ok", "tamper"), problems)
    if problems:
        return problems
    return Fix(
        device_id,
        ts,
        lat,
        lon,
        15.0 if acc is None else acc,
        seq,
        kind,
        spd,
        hdg,
        bat,
        strap,
        source,
    )


def _check_tag(tag: Any, device_id: str, problems: _Problems) -> None:
    if tag is None:
        return
    if not isinstance(tag, str):
        problems.append(("wrong_type", f"tag is {_described(tag)}, expected a string"))
    elif tag != device_id:
        problems.append(
            ("tag_mismatch", f"tag {_show(tag)} does not match the topic's id {_show(device_id)}")
        )


def _timestamp(value: Any, limit: float, received: float | None, problems: _Problems) -> Any:
    if value is None:
        problems.append(("missing_field", "ts is missing"))
        return _BAD
    if isinstance(value, str):
        ts = _parse_rfc3339(value, problems)
    else:
        ts = _as_float("ts", value, problems)
    if ts is _BAD:
        return _BAD
    shown = _show(value)
    if ts < MIN_TS:
        problems.append(("timestamp_too_old", f"ts {shown} is before 2000-01-01T00:00:00Z"))
    elif ts > limit:
        if ts > MAX_TS:
            why = "is after 9999-12-31T23:59:59Z"
        else:
            ahead, allowed = ts - received, limit - received
            why = f"is {ahead:.1f} s ahead of the receiving clock (limit {allowed:g} s)"
        problems.append(("timestamp_in_future", f"ts {shown} {why}"))
    else:
        return ts
    return _BAD


def _parse_rfc3339(value: str, problems: _Problems) -> Any:
    try:
        parsed = msgspec.convert(value, datetime)
    except (msgspec.ValidationError, ValueError, OverflowError):
        problems.append(("bad_timestamp", f"ts {_show(value)} is not an RFC 3339 timestamp"))
        return _BAD
    if parsed.tzinfo is None:
        problems.append(("naive_timestamp", f"ts {_show(value)} has no UTC offset or Z"))
        return _BAD
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):
        problems.append(("bad_timestamp", f"ts {_show(value)} is outside the datetime range"))
        return _BAD


def _position(obj: dict[str, Any], kind: str, problems: _Problems) -> tuple[Any, Any]:
    lat = _number(obj, "lat", problems, -90.0, 90.0)
    lon = _number(obj, "lon", problems, -180.0, 180.0)
    if kind != "none":
        for name, value in (("lat", lat), ("lon", lon)):
            if value is None:
                problems.append(
                    ("missing_field", f'{name} is missing (required unless fix is "none")')
                )
    elif (lat is None) != (lon is None):
        given, missing = ("lat", "lon") if lon is None else ("lon", "lat")
        problems.append(
            ("missing_field", f"{missing} is missing: {given} was given and a position needs both")
        )
    if lat == 0.0 and lon == 0.0:
        problems.append(
            ("null_island", "lat 0 and lon 0: a position at exactly 0,0 is a device without a fix")
        )
    return lat, lon


def _number(
    obj: dict[str, Any],
    name: str,
    problems: _Problems,
    low: float,
    high: float,
    low_open: bool = False,
) -> Any:
    """The field as a float in range, None when absent, _BAD when wrong (problem recorded)."""
    value = obj.get(name)
    if value is None:
        return None
    number = _as_float(name, value, problems)
    if number is _BAD:
        return _BAD
    if number < low or (low_open and number == low) or number > high:
        bounds = (
            f"must be > {low:g}"
            if low_open
            else (f"must be >= {low:g}" if high == math.inf else f"is outside {low:g}..{high:g}")
        )
        problems.append(("out_of_range", f"{name} {_show(value)} {bounds}"))
        return _BAD
    return number


def _as_float(name: str, value: Any, problems: _Problems) -> Any:
    if type(value) is bool or not isinstance(value, int | float):
        problems.append(("wrong_type", f"{name} is {_described(value)}, expected a number"))
        return _BAD
    try:
        number = float(value)
    except OverflowError:
        problems.append(("out_of_range", f"{name} {_show(value)} is too large for a number"))
        return _BAD
    if not math.isfinite(number):
        problems.append(("not_finite", f"{name} {_show(value)} is not a finite number"))
        return _BAD
    return number


def _seq(value: Any, problems: _Problems) -> Any:
    if value is None:
        return None
    if type(value) is not int:
        problems.append(("wrong_type", f"seq is {_described(value)}, expected an integer"))
        return _BAD
    if not 0 <= value <= _MAX_SEQ:
        problems.append(("out_of_range", f"seq {_show(value)} is outside 0..2^63-1"))
        return _BAD
    return value


def _choice(obj: dict[str, Any], name: str, allowed: tuple[str, ...], problems: _Problems) -> Any:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(("wrong_type", f"{name} is {_described(value)}, expected a string"))
        return _BAD
    if value not in allowed:
        problems.append(
            ("out_of_range", f"{name} {_show(value)} is not one of {', '.join(allowed)}")
        )
        return _BAD
    return value


_KINDS = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _described(value: Any) -> str:
    """ "a string 'x'", "an array": containers are left to the rejection's payload."""
    if isinstance(value, dict | list):
        return _kind(value)
    return f"{_kind(value)} {_show(value)}"


def _show(value: Any) -> str:
    if value is None or type(value) is bool:
        return json.dumps(value)  # true, false, null as the device sent them
    # repr escapes lone surrogates, so a detail always encodes as UTF-8
    return _clip(repr(value))


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
