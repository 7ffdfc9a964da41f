"""Repeated approach: visits over days, per tag and case.

Approach, warning and loitering episodes that overlap or are less than
`repeat_gap_s` apart are one visit. When `repeat_count` visits fall within
`repeat_window_d` days, the visit that completes the count raises one alert.
Further visits raise nothing while an alerted visit is still in the window;
once it has slid out, the next visit that completes a count raises again.
"""

from __future__ import annotations

from tagwatch.config import Rules
from tagwatch.engine.alerts import OPEN, WARNING, alert_id
from tagwatch.engine.emit import Emitter
from tagwatch.engine.state import TagState, Visit
from tagwatch.wire import Fix

REPEATED = "pattern.repeated_approach"


def activity(st: TagState, tag: str, case: str, fix: Fix, rules: Rules, em: Emitter) -> None:
    """The tag is on a visit at this fix (an approach, warning or loiter episode is open)."""
    visits = st.visits.setdefault(case, [])
    ts = fix.ts
    if visits and ts - visits[-1].end < rules.repeat_gap_s:
        visits[-1].end = max(visits[-1].end, ts)
        return
    visits.append(Visit(ts, ts))
    window_start = ts - rules.repeat_window_d * 86400
    while visits and visits[0].end < window_start:
        visits.pop(0)
    if len(visits) >= rules.repeat_count and not any(v.alerted for v in visits):
        visits[-1].alerted = True
        em.record(
            id=alert_id(case, tag, REPEATED, None, ts),
            type=REPEATED,
            severity=WARNING,
            state=OPEN,
            case=case,
            tag=tag,
            ts=ts,
            fix=fix,
            detail=f"{len(visits)} separate visits near the victim's zones within "
            f"{rules.repeat_window_d:.0f} days",
        )
