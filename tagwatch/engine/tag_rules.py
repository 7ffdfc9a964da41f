"""Rules about the tag itself: tamper, battery, jump. Point events, one per case.

- Tamper: raised when `strap` turns to "tamper"; re-armed by a fix with "ok".
- Battery: once per discharge; re-armed when `bat` rises 10 points above
  `battery_low_pct`.
- Jump: implied speed from the last plausible fix above `max_speed_mps`, both
  fixes with acc <= 50 m. The distance counted is what lies beyond both fixes'
  accuracy, so two fixes taken at the same second a few metres apart are no jump.
  The jumped fix is still tested against the zones but not used for speeds, and
  the next test compares with the last plausible fix.
"""

from __future__ import annotations

import math

from tagwatch.config import Rules
from tagwatch.engine.alerts import CRITICAL, OPEN, WARNING, alert_id
from tagwatch.engine.emit import Emitter
from tagwatch.engine.state import TagState
from tagwatch.wire import Fix

TAMPER, BATTERY, JUMP = "tag.tamper", "tag.battery_low", "tag.jump"
JUMP_MAX_ACC_M = 50.0


def _point(
    em: Emitter, kind: str, severity: str, case: str, tag: str, fix: Fix, detail: str
) -> None:
    ep_id = alert_id(case, tag, kind, None, fix.ts)
    em.record(
        id=ep_id,
        type=kind,
        severity=severity,
        state=OPEN,
        case=case,
        tag=tag,
        ts=fix.ts,
        fix=fix,
        detail=detail,
    )


def tamper(st: TagState, tag: str, fix: Fix, cases: list[tuple[str, Rules]], em: Emitter) -> None:
    if fix.strap == "ok":
        st.tampered = False
    elif fix.strap == "tamper" and not st.tampered:
        st.tampered = True
        for case, _ in cases:
            _point(em, TAMPER, CRITICAL, case, tag, fix, "strap tamper reported by the tag")


def battery(st: TagState, tag: str, fix: Fix, cases: list[tuple[str, Rules]], em: Emitter) -> None:
    if fix.bat is None:
        return
    low = cases[0][1].battery_low_pct
    if st.battery_armed and fix.bat <= low:
        st.battery_armed = False
        for case, _ in cases:
            _point(em, BATTERY, WARNING, case, tag, fix, f"battery at {fix.bat:.0f}%")
    elif not st.battery_armed and fix.bat >= low + 10:
        st.battery_armed = True


# chord(a, b): the straight-line distance between ECEF points. Within a few km it
# equals the geodesic to well under a millimetre, and it is never longer than the
# geodesic. math.dist itself, without a Python frame: it runs for most fixes.
chord = math.dist


def jump(st: TagState, fix: Fix, xyz: tuple, rules: Rules) -> tuple[float, float] | None:
    """(distance, seconds) from the last plausible fix when this one jumped, else None."""
    last, since = st.xyz, st.pos_ts
    if last is None or since is None:
        return None
    acc, last_acc = fix.acc, st.acc or 0.0
    if acc > JUMP_MAX_ACC_M or last_acc > JUMP_MAX_ACC_M:
        return None
    distance = chord(last, xyz)
    # abs: after a fix dated ahead of its arrival (DESIGN 3.2 Order) a live fix can be
    # older than the last position; the speed between them is the same either way
    dt = abs(fix.ts - since)
    if distance - acc - last_acc <= rules.max_speed_mps * dt:
        return None
    return distance, dt


def jumped(
    st: TagState, tag: str, fix: Fix, xyz: tuple, cases: list[tuple[str, Rules]], em: Emitter
) -> bool:
    """True when this fix jumped from the last plausible one (and raise tag.jump)."""
    found = jump(st, fix, xyz, cases[0][1])
    if found is None:
        return False
    distance, dt = found
    speed = distance / dt if dt > 0 else math.inf
    detail = f"moved {distance:.0f} m in {dt:.0f} s ({speed:.0f} m/s): implausible"
    for case, _ in cases:
        _point(em, JUMP, WARNING, case, tag, fix, detail)
    return True
