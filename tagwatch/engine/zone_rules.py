"""Rules about one fix and one zone: breach, exit, warning, curfew, loitering, approach.

Semantics (DESIGN 3.6, and the README where the design is silent):
- One fix inside an active exclusion zone opens a `probable` breach (warning);
  a second consecutive fix inside confirms it (critical). A fix outside but
  within max(exit_margin_m, acc) of the boundary is ambiguous: it neither
  confirms nor breaks the run. A clearly-outside fix resets it.
- A slow tag's short visit may show one shallow fix inside only: a probable breach
  whose fixes inside lay on a walk's track is confirmed at the fix that shows the
  tag out again when before, inside and after lie on one walk that went on
  (evidence.through): the record needs the breach even though the tag has left.
- A breach ends after 2 consecutive fixes outside by more than
  max(exit_margin_m, acc); `zone.exit` is published only for a confirmed
  breach (a probable one that never confirmed just resolves).
- A zone whose schedule ends while a breach is open resolves it ("schedule
  ended"); one whose window opens while the tag is inside breaches at the next fix.
- Curfew (inclusion zone, scheduled): the mirror image, outside instead of inside.
"""

from __future__ import annotations

from tagwatch.engine import approach, evidence
from tagwatch.engine.alerts import (
    CRITICAL,
    INFO,
    OPEN,
    RESOLVED,
    UPDATED,
    WARNING,
    alert_id,
)
from tagwatch.engine.context import FixView, ZoneInfo
from tagwatch.engine.emit import Emitter
from tagwatch.engine.state import Episode, ZoneTrack

BREACH, EXIT, ZONE_WARNING, CURFEW = "zone.breach", "zone.exit", "zone.warning", "curfew.breach"
LATE_BREACH, LOITERING = "zone.late_breach", "pattern.loitering"
PROBABLE, CONFIRMED = "probable", "confirmed"
# sigmas of depth a walk's fixes inside show at least, to confirm at its exit: a fix at the
# very edge says nothing of which side the tag was on
WALK_MIN = 0.1


def apply(track: ZoneTrack, zone: ZoneInfo, view: FixView, active: bool, em: Emitter) -> list[str]:
    """Apply every zone rule for one live fix; returns the episode kinds opened."""
    if not zone.exclusion:
        _curfew(track, zone, view, active, em)
        return []
    if not active:
        _schedule_ended(track, zone, view, em)
        return []
    if _approach_only(track, zone, view):
        return [approach.APPROACH] if _approach(track, zone, view, em) else []
    opened = []
    if _breach(track, zone, view, em):
        opened.append(BREACH)
    if _warning(track, zone, view, em):
        opened.append(ZONE_WARNING)
    if _loitering(track, zone, view, em):
        opened.append(LOITERING)
    if _approach(track, zone, view, em):
        opened.append(approach.APPROACH)
    return opened


def _approach_only(track: ZoneTrack, zone: ZoneInfo, view: FixView) -> bool:
    """Far outside the warning and loitering rings with no breach, warning or loiter
    under way, the other rules would change nothing: the common case near a zone."""
    return (
        view.distance > zone.approach_only_m
        and track.breach is None
        and track.warning is None
        and track.loiter is None
        and track.loiter_start is None
    )


def _clear_margin(zone: ZoneInfo, view: FixView) -> float:
    return max(zone.rules.exit_margin_m, view.fix.acc)


def _emit(
    em: Emitter,
    zone: ZoneInfo,
    view: FixView,
    kind: str,
    ep_id: str,
    severity: str,
    state: str,
    detail: str,
    **extra,
) -> None:
    em.record(
        id=ep_id,
        type=kind,
        severity=severity,
        state=state,
        case=zone.case,
        tag=view.tag,
        ts=view.fix.ts,
        fix=view.fix,
        zone=zone.zone,
        victim=zone.victim,
        distance=view.distance,
        detail=detail,
        **extra,
    )


def _resolve(
    em: Emitter, zone: ZoneInfo, view: FixView, kind: str, episode: Episode, detail: str
) -> None:
    """The record that ends an episode: same id, severity and confidence, state resolved."""
    _emit(
        em,
        zone,
        view,
        kind,
        episode.id,
        episode.severity,
        RESOLVED,
        detail,
        confidence=episode.confidence,
    )


def _credit(track: ZoneTrack, zone: ZoneInfo, view: FixView, em: Emitter, kind: str) -> None:
    """A displaced run proved true (corroborated by the tag's motion): the fixes it held
    back inside the zone count after all, wherever this fix is. Any other fix that is
    not displaced ends the run unexplained: what it held is dropped."""
    breach = track.breach
    if view.corroborated and track.held and breach is not None and breach.confidence == PROBABLE:
        track.evidence += track.held
        if track.evidence >= 2:
            where = "inside exclusion zone" if zone.exclusion else "outside curfew zone"
            detail = f"the tag's motion shows its earlier fixes {where} {zone.zone} true"
            _confirm(em, zone, view, kind, breach, f"{detail} (confirmed)")
    if not view.displaced and not evidence.coarse(view.fix):
        track.held = 0.0


def _breach(track: ZoneTrack, zone: ZoneInfo, view: FixView, em: Emitter) -> bool:
    _credit(track, zone, view, em, BREACH)
    d = view.distance
    if d <= 0:
        track.exit_run = 0
        track.inside_run += 1
        return _inside(
            track, zone, view, em, BREACH, -d, f"inside exclusion zone {zone.zone} by {-d:.0f} m"
        )
    if d > _clear_margin(zone, view):
        if view.displaced:
            return False  # displaced (multipath): neither ends a breach nor breaks its run
        if _walked_out(track, view):
            detail = f"walked through exclusion zone {zone.zone} and out (confirmed)"
            _confirm(em, zone, view, BREACH, track.breach, detail)
        if not evidence.coarse(view.fix):
            track.inside_run = track.evidence = 0
            track.walk = 0.0
        if track.breach is not None:
            track.exit_run += 1
            if track.exit_run >= 2:
                _end_breach(track, zone, view, em, BREACH, f"left exclusion zone {zone.zone}")
    else:
        track.exit_run = 0  # ambiguous: neither confirms nor ends
    return False


def _walked_out(track: ZoneTrack, view: FixView) -> bool:
    """A short probable breach whose fixes inside lay on the track of a walk (or faster)
    and the clearly-outside fix that follows is on one walk with them and the fix before
    (evidence.through): the tag went in, if only at the edge, and on out. A tag standing
    outside whose fix multipath put inside comes back where it stood; a longer probable
    breach is left to the staying rule (PERSIST_S). Confirmed as the tag leaves: the
    record needs the breach even though it is over."""
    breach = track.breach
    return (
        breach is not None
        and breach.confidence == PROBABLE
        and track.walk > WALK_MIN
        and view.through
        and view.fix.ts - breach.opened <= evidence.PERSIST_S
    )


def _inside(
    track: ZoneTrack,
    zone: ZoneInfo,
    view: FixView,
    em: Emitter,
    kind: str,
    depth: float,
    detail: str,
) -> bool:
    """The shared confirmation logic of zone and curfew breaches; True when opened.

    A fix adds its weight in evidence (engine/evidence.py) when it is inside by more
    than one sigma of its error (acc / 1.515), nothing when shallower (counted in
    proportion, shallow fixes confirmed 7 more false breaches over 20 bench seeds and
    no missed visit); 2 pieces confirm. So does staying: a plausible fix inside
    after PERSIST_S of fixes inside (no multipath lasts that long). A fix on a walk's
    track adds its depth in sigmas to `walk`, for the confirmation at the exit."""
    deep = depth * evidence.SIGMA_PER_ACC > view.fix.acc
    gained = view.weight if deep else 0.0
    episode = track.breach
    opened = episode is None
    if episode is None:
        ep_id = alert_id(zone.case, view.tag, kind, zone.zone, view.fix.ts)
        episode = track.breach = Episode(ep_id, view.fix.ts, WARNING, PROBABLE)
        track.evidence = gained
        _emit(
            em,
            zone,
            view,
            kind,
            ep_id,
            WARNING,
            OPEN,
            f"{detail} (one fix: probable)",
            confidence=PROBABLE,
        )
    else:
        track.evidence += gained
    if view.displaced and deep:
        track.held += view.held
    if view.moving:
        track.walk += min(1.0, depth * evidence.SIGMA_PER_ACC / view.fix.acc)
    if episode.confidence == PROBABLE and (
        track.evidence >= 2
        or (
            view.weight > 0
            and track.inside_run >= 3
            and view.fix.ts - episode.opened >= evidence.PERSIST_S
        )
    ):
        _confirm(em, zone, view, kind, episode, f"{detail} (confirmed)")
    return opened


def _confirm(
    em: Emitter, zone: ZoneInfo, view: FixView, kind: str, episode: Episode, detail: str
) -> None:
    episode.severity, episode.confidence = CRITICAL, CONFIRMED
    _emit(em, zone, view, kind, episode.id, CRITICAL, UPDATED, detail, confidence=CONFIRMED)


def _end_breach(
    track: ZoneTrack, zone: ZoneInfo, view: FixView, em: Emitter, kind: str, detail: str
) -> None:
    episode = track.breach
    assert episode is not None
    confirmed = episode.confidence == CONFIRMED
    _resolve(
        em,
        zone,
        view,
        kind,
        episode,
        detail if confirmed else f"{detail}; the breach was never confirmed",
    )
    if confirmed and kind == BREACH:
        exit_id = alert_id(zone.case, view.tag, EXIT, zone.zone, view.fix.ts)
        _emit(em, zone, view, EXIT, exit_id, INFO, OPEN, detail)
    track.breach = None
    track.exit_run = track.inside_run = track.evidence = 0
    track.held = track.walk = 0.0


def _schedule_ended(track: ZoneTrack, zone: ZoneInfo, view: FixView, em: Emitter) -> None:
    """Outside its schedule a zone raises nothing, and open episodes end."""
    breach_kind = BREACH if zone.exclusion else CURFEW
    for attr, kind in (
        ("breach", breach_kind),
        ("warning", ZONE_WARNING),
        ("approach", approach.APPROACH),
        ("loiter", LOITERING),
    ):
        episode = getattr(track, attr)
        if episode is not None:
            _resolve(em, zone, view, kind, episode, f"schedule of zone {zone.zone} ended")
            setattr(track, attr, None)
    track.inside_run = track.exit_run = track.warn_clear_run = track.approach_low_run = 0
    track.evidence = track.held = track.walk = 0
    track.window.clear()
    track.loiter_start = track.loiter_last = None


def _curfew(track: ZoneTrack, zone: ZoneInfo, view: FixView, active: bool, em: Emitter) -> None:
    if not active:
        if track.breach is not None:
            _schedule_ended(track, zone, view, em)
        return
    _credit(track, zone, view, em, CURFEW)
    d = view.distance
    if d > 0:
        track.exit_run = 0
        track.inside_run += 1  # "inside" the violation: outside the inclusion zone
        _inside(track, zone, view, em, CURFEW, d, f"outside curfew zone {zone.zone} by {d:.0f} m")
    elif -d > _clear_margin(zone, view):
        if view.displaced:
            return  # displaced (multipath): neither ends a breach nor breaks its run
        if not evidence.coarse(view.fix):
            track.inside_run = track.evidence = 0
            track.walk = 0.0
        if track.breach is not None:
            track.exit_run += 1
            if track.exit_run >= 2:
                _end_breach(track, zone, view, em, CURFEW, f"back inside curfew zone {zone.zone}")
    else:
        track.exit_run = 0


def _warning(track: ZoneTrack, zone: ZoneInfo, view: FixView, em: Emitter) -> bool:
    d = view.distance
    if 0 < d <= zone.warn_m:
        track.warn_clear_run = 0
        if track.warning is None and track.breach is None:
            ep_id = alert_id(zone.case, view.tag, ZONE_WARNING, zone.zone, view.fix.ts)
            track.warning = Episode(ep_id, view.fix.ts, WARNING)
            _emit(
                em,
                zone,
                view,
                ZONE_WARNING,
                ep_id,
                WARNING,
                OPEN,
                f"{d:.0f} m from exclusion zone {zone.zone} (warning ring {zone.warn_m:.0f} m)",
            )
            return True
        return False
    if track.warning is not None and d > zone.warn_m + zone.rules.exit_margin_m:
        track.warn_clear_run += 1
        if track.warn_clear_run >= 2:
            _resolve(
                em,
                zone,
                view,
                ZONE_WARNING,
                track.warning,
                f"left the warning ring of zone {zone.zone}",
            )
            track.warning = None
            track.warn_clear_run = 0
    elif d <= 0:
        track.warn_clear_run = 0
    return False


def _loitering(track: ZoneTrack, zone: ZoneInfo, view: FixView, em: Emitter) -> bool:
    rules, d, ts = zone.rules, view.distance, view.fix.ts
    if d <= 0 or d > rules.loiter_m + rules.exit_margin_m:
        _end_loiter(track, zone, view, em)
        return False
    if d > rules.loiter_m:
        return False  # hysteresis band: keeps a running loiter, starts none
    if track.loiter_start is None or ts - (track.loiter_last or ts) > rules.no_comms_s:
        _end_loiter(track, zone, view, em)
        track.loiter_start = ts
    track.loiter_last = ts
    if track.loiter is None and ts - track.loiter_start >= rules.loiter_s:
        ep_id = alert_id(zone.case, view.tag, LOITERING, zone.zone, ts)
        track.loiter = Episode(ep_id, ts, WARNING)
        minutes = (ts - track.loiter_start) / 60
        _emit(
            em,
            zone,
            view,
            LOITERING,
            ep_id,
            WARNING,
            OPEN,
            f"within {rules.loiter_m:.0f} m of zone {zone.zone} for {minutes:.0f} min",
        )
        return True
    return False


def _end_loiter(track: ZoneTrack, zone: ZoneInfo, view: FixView, em: Emitter) -> None:
    if track.loiter is not None:
        _resolve(
            em, zone, view, LOITERING, track.loiter, f"no longer loitering near zone {zone.zone}"
        )
        track.loiter = None
    track.loiter_start = track.loiter_last = None


def _approach(track: ZoneTrack, zone: ZoneInfo, view: FixView, em: Emitter) -> bool:
    rules, d = zone.rules, view.distance
    if d <= 0:
        track.window.clear()
        if track.approach is not None:  # arrived: the breach takes over
            _resolve(em, zone, view, approach.APPROACH, track.approach, f"reached zone {zone.zone}")
            track.approach = None
        return False
    return approach.follow(
        track,
        view,
        rules,
        em,
        case=zone.case,
        zone=zone.zone,
        victim=zone.victim,
        label=f"zone {zone.zone}",
    )


def late(track: ZoneTrack, zone: ZoneInfo, view: FixView, active: bool, em: Emitter) -> None:
    """A buffered, out-of-order fix: one late breach per run of late fixes inside a zone.

    A late fix inside while a probable breach of the zone is open is evidence for it
    too (DESIGN 3.6): it adds to the breach's evidence (one piece when inside by more
    than its accuracy; no motion model judges the past) and confirms it when they
    add up. It also raises the run's late breach: the upload shows a visit either way."""
    violating = active and (view.distance <= 0 if zone.exclusion else view.distance > 0)
    breach = track.breach
    if breach is not None and breach.opened <= view.fix.ts:
        if breach.confidence == CONFIRMED or not violating:
            return  # the live breach episode already covers this time
        depth = -view.distance if zone.exclusion else view.distance
        if depth > 0:
            track.evidence += min(1.0, depth * evidence.SIGMA_PER_ACC / view.fix.acc)
        if track.evidence >= 2:
            kind = BREACH if zone.exclusion else CURFEW
            where = "inside exclusion zone" if zone.exclusion else "outside curfew zone"
            detail = f"buffered fixes show the tag {where} {zone.zone} (confirmed)"
            _confirm(em, zone, view, kind, breach, detail)
    if not violating:
        track.late_run = None
        return
    if track.late_run is not None:
        return
    track.late_run = alert_id(zone.case, view.tag, LATE_BREACH, zone.zone, view.fix.ts)
    where = "inside exclusion zone" if zone.exclusion else "outside curfew zone"
    _emit(
        em,
        zone,
        view,
        LATE_BREACH,
        track.late_run,
        WARNING,
        OPEN,
        f"a buffered fix shows the tag {where} {zone.zone} earlier",
    )
