"""Signed fixes (DESIGN 5, issue 8): refuse forged and replayed fixes. Pure, no I/O but key files.

Scheme (optional per deployment; each tag or victim device has its own key):

- A signed fix object carries `"sig": "<64 hex digits>"`, the HMAC-SHA256 of the
  fix's canonical bytes under the device's key. In a buffered upload (a JSON
  array) every fix carries its own `sig`.
- The canonical bytes are the fix object without its `sig` member, written as
  UTF-8 JSON the way RFC 8785 (JCS) writes it: members sorted by the UTF-16
  code units of their names, no whitespace, strings with only `"`, `\\` and
  control characters escaped (`\\b \\t \\n \\f \\r`, else `\\u00xx`), other
  characters as raw UTF-8; `true`, `false`, `null`; floats in the shortest
  form that reads back to the same double, as ECMAScript prints it (`8.0` is
  `8`, `1e-7` is `1e-7`, `0.00001` is `0.00001`, `1e21` is `1e+21`).
  One departure from JCS: a JSON integer (no fraction, no exponent) is written
  exactly, so a `seq` above 2**53 keeps every digit.
  Example: `{"seq":7,"tag":"T-1","ts":"2026-11-28T10:15:30Z","lat":51.5,"lon":-0.12}`
  signs the bytes `{"lat":51.5,"lon":-0.12,"seq":7,"tag":"T-1","ts":"2026-11-28T10:15:30Z"}`.
  Because the signature covers every member, including unknown ones, and the
  verifier re-serialises what it parsed, the device may send any whitespace,
  member order or number spelling, and a change to any value breaks it.
- `seq` is required in a signed fix and covered by the signature, so a
  captured fix cannot be replayed under a new `seq`.

Replay window. `last_seq` is the highest `seq` already accepted for the
device. A fix is fresh when `seq > last_seq - window`, so with `window` 0 it
must be strictly above `last_seq`. The window exists because a tag that lost
its link uploads its backlog later (a JSON array, or several), possibly after a
live fix with a higher `seq` got through on reconnect, and QoS 1 redelivery can
reorder messages across a reconnect. A fix inside the window that was already
accepted is a duplicate: pass the recently accepted seqs as `seen` (the daemon
keeps them per device) and it is `replayed`; the daemon's duplicate check
(DESIGN 4, same `seq`) catches it too. DEFAULT_WINDOW covers a backlog of 64
fixes overtaken by live ones; a longer outage is uploaded oldest first by the
firmware, which keeps `seq` increasing. Verify every fix of one message
against the `last_seq` from before the message, then advance it to the
highest accepted `seq`, so the order inside a batch does not matter.
A device must keep `seq` across reboots (or be re-keyed, which resets
`last_seq`): after a reset to 0 its fixes are `replayed`.

Keys never come from the TOML: the environment variable TAGWATCH_TAG_KEYS
names a file of `device_id hexkey` lines (`#` comments, blank lines allowed)
or a folder of files named after the device id, each holding one hex key.
Keys are at least 16 bytes (32 hex digits); `tag-credentials add --keys FILE`
(deploy/mosquitto) generates 32.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from tagwatch.wire import MAX_BATCH, MAX_PAYLOAD_BYTES, PAYLOAD_EXCERPT_CHARS, too_deep

KEYS_ENV = "TAGWATCH_TAG_KEYS"
SIG_FIELD = "sig"
DEFAULT_WINDOW = 64
MIN_KEY_BYTES = 16

UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
REPLAYED = "replayed"
MISSING_SEQ = "missing_seq"
REASONS = frozenset({UNSIGNED, BAD_SIGNATURE, REPLAYED, MISSING_SEQ})

_string = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) writes
_SIG_HEX = re.compile(r"[0-9a-fA-F]{64}")
_KEY_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class KeyFileError(Exception):
    """A key file or folder that cannot be used; the message names the file and line."""


# ---------------------------------------------------------------- canonical form


def canonical_bytes(fix: Mapping[str, Any]) -> bytes:
    """The bytes a fix's signature covers: the object without `sig`, canonical JSON."""
    body = {k: v for k, v in fix.items() if k != SIG_FIELD}
    return _write(body).encode("utf-8")


def _write(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return _string(value)  # escapes exactly as JCS does
    if isinstance(value, Mapping):
        names = sorted(value) if all(map(str.isascii, value)) else sorted(value, key=_utf16)
        return "{" + ",".join(f"{_write(n)}:{_write(value[n])}" for n in names) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_write(v) for v in value) + "]"
    raise TypeError(f"fix member of type {type(value).__name__} has no JSON form")


def _utf16(name: str) -> bytes:
    return name.encode("utf-16-be")


def _number(x: float) -> str:
    """ECMAScript Number::toString of a double (RFC 8785 section 3.2.2.3)."""
    if not math.isfinite(x):
        raise ValueError(f"number {x!r} has no JSON form")
    if x == 0:
        return "0"  # also -0
    text = repr(x)
    if "e" not in text:
        # Python writes 1e-4 <= |x| < 1e16 in fixed notation with the same shortest
        # digits ECMAScript uses there; only its ".0" of whole numbers differs.
        return text[:-2] if text.endswith(".0") else text
    sign = "-" if x < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(x))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + text


# ---------------------------------------------------------------- sign and verify


def signature(fix: Mapping[str, Any], key: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of the fix's canonical bytes."""
    return hmac.new(key, canonical_bytes(fix), hashlib.sha256).hexdigest()


def sign(fix: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of `fix` with its `sig` (for devices, simulators and tests)."""
    return {**fix, SIG_FIELD: signature(fix, key)}


def verify(
    fix_obj: dict,
    key: bytes,
    last_seq: int | None,
    window: int,
    seen: Container[int] = (),
) -> str | None:
    """None when the fix is validly signed and fresh, else the rejection reason.

    Reasons, checked in this order: `unsigned` (no `sig`), `missing_seq` (no
    integer `seq` >= 0, so nothing binds the signature to a place in the
    stream), `bad_signature` (malformed, wrong key, or any member changed),
    `replayed` (`seq` <= `last_seq - window`, or in `seen`). `last_seq` None:
    nothing accepted from this device yet. The signature is checked before
    freshness so a forger learns nothing about the device's `seq`.
    """
    sig = fix_obj.get(SIG_FIELD)
    if sig is None:
        return UNSIGNED
    seq = fix_obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return MISSING_SEQ
    if not isinstance(sig, str) or not _SIG_HEX.fullmatch(sig):
        return BAD_SIGNATURE
    try:
        expected = signature(fix_obj, key)
    except (TypeError, ValueError):  # NaN or a non-JSON value: it was never signed as is
        return BAD_SIGNATURE
    if not hmac.compare_digest(expected, sig.lower()):
        return BAD_SIGNATURE
    if last_seq is not None and seq <= last_seq - max(window, 0):
        return REPLAYED
    if seq in seen:
        return REPLAYED
    return None


# ---------------------------------------------------------------- one MQTT payload


@dataclass(frozen=True)
class Refusal:
    """One refused fix: its reason, a detail naming the device and the seq, its text."""

    reason: str
    detail: str
    excerpt: str


@dataclass
class Screened:
    """What is left of a payload for the wire decoder (None: nothing), and what was refused."""

    payload: bytes | None
    refused: list[Refusal] = field(default_factory=list)


_JSON = json.JSONDecoder()  # the wire decoder's reference parser (tagwatch.wire slow path)


def screen(
    payload: bytes,
    device: str,
    key: bytes,
    last_seq: int | None,
    window: int,
    seen: Container[int] = (),
) -> Screened:
    """Verify each fix object of a fix payload; keep only the validly signed, fresh ones.

    A payload the wire decoder would reject whole (too large, not UTF-8, not
    JSON, not an object or array, an empty or oversized array) is passed on
    unchanged, so it gets the decoder's reason. Otherwise the accepted fix
    objects are written out again as JSON (an array, or the lone object): the
    decoder then reads exactly the members that were verified, whatever
    duplicate names or number spellings the device sent. Array elements that
    are not objects are passed on too, for the decoder's `not_object` (its
    "fix n of m" then counts within what was passed on).
    """
    doc = _parse(payload)
    if isinstance(doc, dict):
        refusal = _check(doc, None, device, key, last_seq, window, seen)
        if refusal is None:
            return Screened(_encode(doc))
        return Screened(None, [Refusal(refusal[0], refusal[1], _clip_bytes(payload))])
    if not isinstance(doc, list) or not 0 < len(doc) <= MAX_BATCH:
        return Screened(payload)
    kept: list[Any] = []
    refused: list[Refusal] = []
    for n, element in enumerate(doc, 1):
        place = f"fix {n} of {len(doc)}"
        refusal = None
        if isinstance(element, dict):
            refusal = _check(element, place, device, key, last_seq, window, seen)
        if refusal is None:
            kept.append(element)
        else:
            refused.append(Refusal(refusal[0], refusal[1], _clip_obj(element)))
    return Screened(_encode(kept) if kept else None, refused)


def _parse(payload: bytes) -> Any:
    """The payload's JSON value, or None when the wire decoder rejects it whole anyway
    (too large, or nested too deep for the recursive parsers and `_write`: too_deep)."""
    if len(payload) > MAX_PAYLOAD_BYTES or too_deep(payload):
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses what the standard library reads (NaN, integers over 64 bits, lone
    # surrogates); the wire decoder reads those, so they must be verified, not passed on.
    try:
        return _JSON.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _check(
    fix: dict,
    place: str | None,
    device: str,
    key: bytes,
    last_seq: int | None,
    window: int,
    seen: Container[int],
) -> tuple[str, str] | None:
    reason = verify(fix, key, last_seq, window, seen)
    if reason is None:
        return None
    seq = fix.get("seq")
    where = f"{device} {place}" if place else device
    if reason == UNSIGNED:
        return reason, f"{where}: signed fixes are required and the fix has no `{SIG_FIELD}`"
    if reason == MISSING_SEQ:
        shown = "none" if seq is None else _clip(repr(seq))
        return reason, f"{where}: a signed fix needs an integer `seq` >= 0, got {shown}"
    if reason == BAD_SIGNATURE:
        return reason, f"{where}, seq {seq}: the signature does not match the device's key"
    if last_seq is not None and seq <= last_seq - max(window, 0):
        return reason, (
            f"{where}, seq {seq}: not above the last accepted seq {last_seq} "
            f"less the replay window of {window}"
        )
    return reason, f"{where}, seq {seq}: this seq was already accepted"


def _encode(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # an integer over 64 bits: the decoder judges it, so keep it
        return json.dumps(doc).encode("ascii")  # escapes keep lone surrogates readable


def _clip_bytes(payload: bytes) -> str:
    text = payload[: 4 * PAYLOAD_EXCERPT_CHARS].decode("utf-8", "replace")
    return text[:PAYLOAD_EXCERPT_CHARS]


def _clip_obj(element: Any) -> str:
    try:
        text = orjson.dumps(element).decode("utf-8")
    except TypeError:
        text = json.dumps(element)  # ASCII escapes: lone surrogates stay printable
    return text[:PAYLOAD_EXCERPT_CHARS]


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- keys


def keys_from_env(environ: Mapping[str, str]) -> dict[str, bytes] | None:
    """The device keys named by TAGWATCH_TAG_KEYS; None when it is unset (signing off)."""
    where = environ.get(KEYS_ENV, "")
    if not where:
        return None
    path = Path(where)
    if not path.exists():
        raise KeyFileError(f"{KEYS_ENV}: {where}: no such file or folder")
    return load_keys(path)


def load_keys(path: Path) -> dict[str, bytes]:
    """Keys by device id, from a `device_id hexkey` file or a folder of `<device_id>` files."""
    if path.is_dir():
        return _keys_from_folder(path)
    keys: dict[str, bytes] = {}
    for number, line in enumerate(_read(path).splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2:
            raise KeyFileError(
                f"{path}:{number}: expected `device_id hexkey`, got {len(parts)} words"
            )
        device, hexkey = parts
        _add_key(keys, device, hexkey, f"{path}:{number}")
    return keys


def _keys_from_folder(folder: Path) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for file in sorted(folder.iterdir()):
        if file.name.startswith(".") or not file.is_file():
            continue  # editor swap files, mounted-secret symlink farms (..data)
        _add_key(keys, file.name, _read(file).strip(), str(file))
    return keys


def _add_key(keys: dict[str, bytes], device: str, hexkey: str, where: str) -> None:
    if not _DEVICE_ID.fullmatch(device):
        raise KeyFileError(f"{where}: {device!r} is not a device id (letters, digits, . _ -)")
    if device in keys:
        raise KeyFileError(f"{where}: device {device} has a second key")
    if not _KEY_HEX.fullmatch(hexkey):
        raise KeyFileError(f"{where}: the key of {device} is not hex digits")
    key = bytes.fromhex(hexkey)
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(
            f"{where}: the key of {device} has {len(key)} bytes; at least "
            f"{MIN_KEY_BYTES} are needed"
        )
    keys[device] = key


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise KeyFileError(f"{path}: cannot read: {reason}") from None
