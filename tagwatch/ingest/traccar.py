"""Traccar's JSON position forwarding (DESIGN 3.1) as tag fixes: pure conversion.

Traccar (`forward.type = json`) posts each position as `{"position": {...}, "device":
{...}}` (its PositionData serialised by Jackson). What is read:

| Traccar | fix (DESIGN 3.2) |
| --- | --- |
| `device.uniqueId` | the tag id (the fix topic's `tag_id`) |
| `position.fixTime` (RFC 3339, or epoch milliseconds) | `ts` (`deviceTime` when absent) |
| `position.latitude`, `longitude` | `lat`, `lon`; when `valid` is false, `fix: "none"` |
| `position.accuracy` (m; 0 = unknown) | `acc` (left out when 0) |
| `position.speed` (knots) | `spd` (m/s) |
| `position.course` (degrees) | `hdg` |
| `position.attributes.batteryLevel` (%) | `bat` |
| `position.attributes.alarm` `tampering` / `removing` | `strap: "tamper"` |

The fix object it makes goes the way of every MQTT fix (validation, rules, record):
a wrong value is rejected there with the usual reasons. Only what cannot be a fix at
all (not JSON, no `position` or `device` object, no usable `uniqueId`) is refused here.
"""

from __future__ import annotations

import re

import msgspec

from tagwatch.wire import MAX_DEPTH, too_deep

KNOT_MPS = 1852 / 3600
TAMPER_ALARMS = frozenset({"tampering", "removing"})
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class TraccarError(ValueError):
    """A body that is not a Traccar position forward; the message says what is wrong."""


def traccar_fix(body: bytes) -> tuple[str, bytes]:
    """(tag id, fix payload as JSON) of one forwarded position."""
    if too_deep(body):
        raise TraccarError(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise TraccarError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise TraccarError('not a JSON object with "position" and "device"')
    position, device = doc.get("position"), doc.get("device")
    if not isinstance(position, dict) or not isinstance(device, dict):
        raise TraccarError('"position" and "device" must both be objects')
    tag = device.get("uniqueId")
    if not isinstance(tag, str) or not _ID.fullmatch(tag):
        raise TraccarError(
            "device.uniqueId must be a tag id: 1 to 64 of the characters A-Z a-z 0-9 . _ -"
        )
    fix: dict = {"tag": tag}
    when = position.get("fixTime", position.get("deviceTime"))
    if when is not None:
        fix["ts"] = _time(when)
    if position.get("valid", True) is False:
        fix["fix"] = "none"  # Traccar repeats the last position on an invalid fix
    else:
        fix["lat"], fix["lon"] = position.get("latitude"), position.get("longitude")
    accuracy = position.get("accuracy")
    if accuracy not in (None, 0, 0.0):
        fix["acc"] = accuracy
    speed = position.get("speed")
    if speed is not None:
        fix["spd"] = speed * KNOT_MPS if _number(speed) else speed
    if position.get("course") is not None:
        fix["hdg"] = position["course"]
    attributes = position.get("attributes")
    if isinstance(attributes, dict):
        if attributes.get("batteryLevel") is not None:
            fix["bat"] = attributes["batteryLevel"]
        if attributes.get("alarm") in TAMPER_ALARMS:
            fix["strap"] = "tamper"
    return tag, msgspec.json.encode(fix)


def _time(value: object) -> object:
    """Jackson writes dates as RFC 3339 text or, configured so, epoch milliseconds; a
    fix's `ts` takes text or Unix seconds. Anything else is passed on to be rejected."""
    if _number(value) and value > 1e11:  # type: ignore[operator]
        return value / 1000.0  # type: ignore[operator]
    return value


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
