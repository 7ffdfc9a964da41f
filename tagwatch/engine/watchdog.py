"""Watchdogs: a tag that goes quiet (no comms) or reports without a position (no fix).

Deadlines live in a heap with lazy entries: a tag has at most one entry per
watchdog, pushed when it is armed; when an entry pops and the tag has
reported since, it is pushed again at the new deadline. So the heap costs
about one push per tag per `no_comms_s`, not one per fix.

A watchdog fires at its deadline, with that `ts`. Its severity is critical
when the last known position was near (within `near_m` of an exclusion zone
or of a victim device), warning otherwise. Any message ends `no_comms`; a
positioned fix ends `no_fix`. State is rebuilt from the tags' states on
restore, so the heap itself is never checkpointed.
"""

from __future__ import annotations

import heapq

from tagwatch.config import Rules
from tagwatch.engine.alerts import CRITICAL, OPEN, RESOLVED, WARNING, alert_id
from tagwatch.engine.emit import Emitter
from tagwatch.engine.state import Episode, TagState

NO_COMMS, NO_FIX = "tag.no_comms", "tag.no_fix"


class Watchdogs:
    def __init__(self) -> None:
        self.heap: list[tuple[float, str, str]] = []  # (deadline, tag, kind); [0] is next
        self.armed: set[tuple[str, str]] = set()

    def arm(self, tag: str, kind: str, deadline: float) -> None:
        if (tag, kind) not in self.armed:
            self.armed.add((tag, kind))
            heapq.heappush(self.heap, (deadline, tag, kind))

    def due(self, now: float) -> list[tuple[float, str, str]]:
        """Pop the entries whose deadline has passed (< now), in deadline order.

        A report at exactly the deadline is in time: the tag was not silent for longer.
        """
        popped = []
        while self.heap and self.heap[0][0] < now:
            entry = heapq.heappop(self.heap)
            self.armed.discard((entry[1], entry[2]))
            popped.append(entry)
        return popped


def deadline(st: TagState, kind: str, rules: Rules) -> float | None:
    if kind == NO_COMMS:
        return None if st.last_msg_ts is None else st.last_msg_ts + rules.no_comms_s
    if st.last_msg_ts is None:
        return None
    since = st.last_pos_ts if st.last_pos_ts is not None else st.last_msg_ts
    return since + rules.no_fix_s


def should_fire(st: TagState, kind: str, rules: Rules, now: float) -> float | None:
    """The deadline if this watchdog fires at or before `now`, else None."""
    due = deadline(st, kind, rules)
    if due is None or due > now:
        return None
    if kind == NO_COMMS:
        return due if st.no_comms is None else None
    # No fix: only while messages keep arriving without a position.
    positioned = st.last_pos_ts if st.last_pos_ts is not None else -1.0
    if st.no_fix is None and st.last_msg_ts is not None and st.last_msg_ts > positioned:
        return due
    return None


def fire(
    st: TagState, tag: str, kind: str, ts: float, cases: list[tuple[str, Rules]], em: Emitter
) -> None:
    severity = CRITICAL if st.near else WARNING
    where = "near a protected zone or victim" if st.near else "away from protected zones"
    if kind == NO_COMMS:
        quiet = cases[0][1].no_comms_s
        detail = f"no message from the tag for {quiet:.0f} s; last known position {where}"
    else:
        quiet = cases[0][1].no_fix_s
        detail = (
            f"the tag reports without a position for {quiet:.0f} s; last known position {where}"
        )
    episode = Episode(alert_id(cases[0][0], tag, kind, None, ts), ts, severity)
    setattr(st, "no_comms" if kind == NO_COMMS else "no_fix", episode)
    for case, _ in cases:
        em.record(
            id=alert_id(case, tag, kind, None, ts),
            type=kind,
            severity=severity,
            state=OPEN,
            case=case,
            tag=tag,
            ts=ts,
            detail=detail,
        )


def end(
    st: TagState, tag: str, kind: str, ts: float, cases: list[tuple[str, Rules]], em: Emitter
) -> None:
    attr = "no_comms" if kind == NO_COMMS else "no_fix"
    episode: Episode | None = getattr(st, attr)
    if episode is None:
        return
    detail = "the tag is reporting again" if kind == NO_COMMS else "the tag has a position again"
    # A buffered upload can carry fixes older than the alert: the episode still
    # ends now, never before it began.
    ts = max(ts, episode.opened)
    for case, _ in cases:
        em.record(
            id=alert_id(case, tag, kind, None, episode.opened),
            type=kind,
            severity=episode.severity,
            state=RESOLVED,
            case=case,
            tag=tag,
            ts=ts,
            detail=detail,
        )
    setattr(st, attr, None)
