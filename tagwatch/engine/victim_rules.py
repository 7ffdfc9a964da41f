"""Rules about a tag and a victim's own device: proximity and approach.

The victim's device is a zone that moves. Proximity is checked whenever
either side reports, and only against a fresh position (within
`victim_fresh_s` of the fix): a stale one never raises a proximity, and an
open proximity whose victim position goes stale is updated to say so rather
than silently resolved (no false sense of safety).
"""

from __future__ import annotations

import math

import msgspec

from tagwatch.engine import approach, evidence
from tagwatch.engine.alerts import CRITICAL, OPEN, RESOLVED, UPDATED, WARNING, alert_id
from tagwatch.engine.context import FixView, VictimInfo
from tagwatch.engine.emit import Emitter
from tagwatch.engine.state import DeviceState, Episode, VictimTrack

PROXIMITY = "proximity"
STALE, PROBABLE, CONFIRMED = "stale", "probable", "confirmed"


def emit(
    em: Emitter,
    alert_type: str,
    victim: VictimInfo,
    view: FixView,
    ep: Episode,
    state: str,
    distance: float | None,
    detail: str,
    ts: float | None = None,
) -> None:
    """A record about a tag and a victim's device (proximity, following): zone null,
    the victim named, the distance to their device."""
    em.record(
        id=ep.id,
        type=alert_type,
        severity=ep.severity,
        state=state,
        case=victim.case,
        tag=view.tag,
        ts=view.fix.ts if ts is None else ts,
        fix=view.fix,
        zone=None,
        victim=victim.victim,
        distance=distance,
        confidence=ep.confidence,
        detail=detail,
    )


def proximity(
    track: VictimTrack,
    victim: VictimInfo,
    view: FixView,
    em: Emitter,
    ts: float,
    device: DeviceState,
) -> bool:
    """Check proximity with a fresh distance; `ts` is the event that caused the check.

    Judged with both fixes' accuracy (DESIGN 3.6): when either is coarse (`lbs`, or
    `acc` over evidence.COARSE_M) a pair within the radius opens a `probable`
    proximity (warning) only; a pair of good fixes within it makes it `confirmed`
    (critical). Leaving needs 2 pairs beyond the radius by more than the margin, or
    than both accuracies for a coarse pair."""
    d, rules = view.distance, victim.rules
    episode = track.proximity
    coarse = device.coarse or evidence.coarse(view.fix)
    where = f"{d:.0f} m from victim {victim.victim}'s device"
    if d <= victim.radius_m:
        track.clear_run = 0
        if episode is None:
            ep_id = alert_id(victim.case, view.tag, PROXIMITY, victim.victim, ts)
            if coarse:
                track.proximity = Episode(ep_id, ts, WARNING, PROBABLE)
                detail = f"{where} (a coarse position: probable)"
            else:
                track.proximity = Episode(ep_id, ts, CRITICAL, CONFIRMED)
                detail = where
            emit(em, PROXIMITY, victim, view, track.proximity, OPEN, view.distance, detail, ts)
            return True
        if not coarse and episode.confidence != CONFIRMED:
            again = " (position fresh again)" if episode.confidence == STALE else " (confirmed)"
            episode.severity, episode.confidence = CRITICAL, CONFIRMED
            detail = f"{where}{again}"
            emit(em, PROXIMITY, victim, view, episode, UPDATED, view.distance, detail, ts)
        elif coarse and episode.confidence == STALE:
            episode.confidence = CONFIRMED if episode.severity == CRITICAL else PROBABLE
            detail = f"{where} (position fresh again)"
            emit(em, PROXIMITY, victim, view, episode, UPDATED, view.distance, detail, ts)
        return False
    margin = rules.exit_margin_m
    if coarse:
        margin = max(margin, math.hypot(view.fix.acc, device.acc))
    if episode is not None and d > victim.radius_m + margin:
        track.clear_run += 1
        if track.clear_run >= 2:
            emit(em, PROXIMITY, victim, view, episode, RESOLVED, view.distance, where, ts)
            track.proximity = None
            track.clear_run = 0
    return False


def judged_against(device: DeviceState, ts: float, fresh_s: float) -> DeviceState:
    """The device position a tag fix at `ts` is judged against: its newest fix, unless
    that is coarse while its last good fix is fresh (within `fresh_s` of `ts`) and within
    twice the coarse fix's accuracy of it. Then the coarse fix does not say the device
    moved, and the good fix is the better position: a cell fix of hundreds of metres
    would turn a good pair within the radius into no proximity, or a probable one."""
    good = device.good
    if not device.coarse or good is None or abs(ts - good[0]) > fresh_s:
        return device
    at, x, y, z, acc = good
    if math.dist((x, y, z), device.xyz) > 2 * device.acc:
        return device
    return msgspec.structs.replace(device, ts=at, xyz=(x, y, z), acc=acc, coarse=False)


def stale(track: VictimTrack, victim: VictimInfo, view: FixView, em: Emitter, age_s: float) -> None:
    """The victim's position is too old to judge: say so on an open proximity, once."""
    episode = track.proximity
    if episode is None or episode.confidence == STALE:
        return
    episode.confidence = STALE
    detail = f"victim {victim.victim}'s device position is {age_s:.0f} s old: proximity unknown"
    emit(em, PROXIMITY, victim, view, episode, UPDATED, view.distance, detail)


def approach_device(track: VictimTrack, victim: VictimInfo, view: FixView, em: Emitter) -> bool:
    return approach.follow(
        track,
        view,
        victim.rules,
        em,
        case=victim.case,
        zone=None,
        victim=victim.victim,
        label=f"victim {victim.victim}",
    )


def forget_window(track: VictimTrack) -> None:
    track.window.clear()
