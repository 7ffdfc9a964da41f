"""Protection status per victim (DESIGN 3.3): is the protection the case promises there?

Computed from what the engine already keeps, with no timer of its own: the tags'
watchdog episodes (no comms, no fix), battery and strap state, and the victim's own
device. The device is judged as the proximity rule judges it, on event time: stale
when the case's tag has reported more than `victim_fresh_s` after the device's last
fix (or the device never reported), so proximity cannot be judged; coarse when that
fix is `lbs` or hundreds of metres wide (no critical proximity from it alone). So the
status changes only at a tag fix, a victim fix or a tag watchdog, and replay equals
live whatever the wall clock.

- `unknown`: no tag of the case has been heard yet (no record: nothing has changed).
- `protected`: nothing below.
- `degraded`: one or more reasons, in REASONS order.

A change opens `protection.degraded` (warning; critical while a tag of the case was
last near a zone or victim), updates it when its reasons or severity change, and on
recovery resolves it and raises `protection.restored` (info, a point event). Ids are
per episode like every alert: case, tag (the case's first), type, victim, start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from tagwatch.config import Rules
from tagwatch.engine.alerts import CRITICAL, INFO, OPEN, RESOLVED, UPDATED, WARNING, alert_id
from tagwatch.engine.emit import Emitter
from tagwatch.engine.state import DeviceState, Episode, TagState

DEGRADED_TYPE, RESTORED_TYPE = "protection.degraded", "protection.restored"
PROTECTED, DEGRADED, UNKNOWN = "protected", "degraded", "unknown"
REASONS = ("no_comms", "no_fix", "low_battery", "tampered", "device_stale", "device_coarse")
WORDS = {
    "no_comms": "the tag is silent",
    "no_fix": "the tag has no position",
    "low_battery": "the tag's battery is low",
    "tampered": "the tag reports strap tamper",
    "device_stale": "the victim's device has no recent position",
    "device_coarse": "the victim's device position is coarse",
}


@dataclass(frozen=True, slots=True)
class Protected:
    """One victim as protection sees it: the case's tags and the victim's own device."""

    key: str  # "case/victim"
    case: str
    victim: str
    tags: tuple[str, ...]
    device: str | None
    rules: Rules


class Protection(msgspec.Struct, gc=False):
    """A victim's protection status (checkpointed as `victim:case/victim`)."""

    status: str = UNKNOWN
    reasons: list[str] = msgspec.field(default_factory=list)
    episode: Episode | None = None


def assess(
    pv: Protected,
    tags: dict[str, TagState],
    devices: dict[str, DeviceState],
) -> tuple[str, list[str], bool]:
    """(status, reasons, near) of a victim, from the states as they are."""
    reasons: set[str] = set()
    heard = near = False
    latest = -math.inf  # the latest message of the case's tags (event time)
    for tag in pv.tags:
        st = tags.get(tag)
        if st is None or st.last_msg_ts is None:
            continue
        heard = True
        latest = max(latest, st.last_msg_ts)
        near = near or st.near
        if st.no_comms is not None:
            reasons.add("no_comms")
        if st.no_fix is not None:
            reasons.add("no_fix")
        if not st.battery_armed:
            reasons.add("low_battery")
        if st.tampered:
            reasons.add("tampered")
    if not heard:
        return UNKNOWN, [], False
    if pv.device is not None:
        device = devices.get(pv.device)
        if device is None or latest - device.ts > pv.rules.victim_fresh_s:
            reasons.add("device_stale")
        elif device.coarse:
            reasons.add("device_coarse")
    ordered = [r for r in REASONS if r in reasons]
    return (DEGRADED if ordered else PROTECTED), ordered, near


def update(
    state: Protection,
    pv: Protected,
    status: str,
    reasons: list[str],
    near: bool,
    ts: float,
    em: Emitter,
) -> bool:
    """Move `state` to the assessed status, emitting the records; True when it changed."""
    severity = CRITICAL if near else WARNING
    episode = state.episode
    if status == UNKNOWN:
        return False
    same = status == state.status and reasons == state.reasons
    if same and (episode is None or episode.severity == severity):
        return False
    tag = pv.tags[0]
    if status == DEGRADED:
        if episode is None:
            ep_id = alert_id(pv.case, tag, DEGRADED_TYPE, pv.victim, ts)
            episode = state.episode = Episode(ep_id, ts, severity)
            _emit(em, pv, episode.id, DEGRADED_TYPE, severity, OPEN, ts, _detail(reasons))
        else:
            episode.severity = severity
            _emit(em, pv, episode.id, DEGRADED_TYPE, severity, UPDATED, ts, _detail(reasons))
    elif episode is not None:  # protected again
        ts = max(ts, episode.opened)
        detail = "protection restored"
        _emit(em, pv, episode.id, DEGRADED_TYPE, episode.severity, RESOLVED, ts, detail)
        restored = alert_id(pv.case, tag, RESTORED_TYPE, pv.victim, ts)
        _emit(em, pv, restored, RESTORED_TYPE, INFO, OPEN, ts, detail)
        state.episode = None
    state.status, state.reasons = status, reasons
    return True


def _detail(reasons: list[str]) -> str:
    return "protection degraded: " + "; ".join(f"{r} ({WORDS[r]})" for r in reasons)


def _emit(
    em: Emitter,
    pv: Protected,
    ep_id: str,
    kind: str,
    severity: str,
    state: str,
    ts: float,
    detail: str,
) -> None:
    em.record(
        id=ep_id,
        type=kind,
        severity=severity,
        state=state,
        case=pv.case,
        tag=pv.tags[0],
        ts=ts,
        victim=pv.victim,
        detail=detail,
    )


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Protection)


def dump(state: Protection) -> bytes:
    return _encoder.encode(state)


def load(blob: bytes) -> Protection:
    return _decoder.decode(blob)
