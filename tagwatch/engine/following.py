"""Following: a tag that moves with the victim's own device (DESIGN 3.3, 3.6).

Judged at the tag's fix times, on event time. The device's recent positions are
kept per device (a bounded ring of (ts, x, y, z, acc) in ECEF metres over
`follow_window_s`) and its position at a tag fix is interpolated between the
two device fixes around it; a tag fix newer than the device's last fix takes
that last fix (fresh: within `victim_fresh_s`, or nothing is judged).

Per tag and victim a run of samples (the tag's position and the device's at
the same time) is kept while the tag stays within `follow_m` of the device; a
sample beyond it, or a gap longer than `victim_fresh_s`, starts the run again.
A coarse sample (`lbs` or acc over evidence.COARSE_M on either side) counts
with its accuracy: distance minus both accuracies must still be within
`follow_m`. The condition holds when the run covers `follow_window_s` and both
the tag and the device went at least `follow_min_travel_m` from where they were
at the start of the window (net displacement, the largest over the window: a
path length adds up GPS jitter, so a device lying on a table would "travel" a
kilometre in 15 minutes of 15 m noise; a coarse position's distance is judged
minus the accuracies, as above). It opens one warning per episode while the
tag is outside `mobile_radius_m` and no proximity is open (inside it,
proximity speaks), and resolves once the condition has not held for
`follow_window_s`.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from tagwatch.engine import evidence
from tagwatch.engine.alerts import OPEN, RESOLVED, WARNING, alert_id
from tagwatch.engine.context import FixView, VictimInfo
from tagwatch.engine.emit import Emitter
from tagwatch.engine.state import Episode, VictimTrack
from tagwatch.engine.victim_rules import emit

FOLLOWING = "pattern.following"
_ITEM = struct.Struct("<5d")  # ts, x, y, z (ECEF metres), acc
_TS = struct.Struct("<d")


def device_add(
    track: bytes, ts: float, xyz: tuple[float, float, float], acc: float, oldest: float
) -> bytes:
    """The device's ring with a new position (time-ordered); entries before `oldest`
    are dropped, but the newest older one is kept to interpolate from."""
    size, start, end = _ITEM.size, 0, len(track)
    while start + size < end and _TS.unpack_from(track, start + size)[0] <= oldest:
        start += size
    return track[start:] + _ITEM.pack(ts, *xyz, acc)


def device_before(track: bytes, ts: float) -> tuple[float, tuple[float, float, float]] | None:
    """The device's last position dated before `ts`, as (its ts, xyz); None if the ring
    holds none (the ring always keeps the position before its newest one)."""
    size = _ITEM.size
    for start in range(len(track) - size, -1, -size):
        at, x, y, z, _acc = _ITEM.unpack_from(track, start)
        if at < ts:
            return at, (x, y, z)
    return None


def device_at(track: bytes, ts: float) -> tuple[tuple[float, float, float], float] | None:
    """The device's position and accuracy at `ts`: interpolated between the fixes
    around it, else the nearest end of the ring (None when empty)."""
    if not track:
        return None
    rows = np.frombuffer(track, dtype="<f8").reshape(-1, 5)
    times = rows[:, 0]
    k = int(np.searchsorted(times, ts))
    if k == 0 or k == len(rows):
        row = rows[0 if k == 0 else -1].tolist()
        return (row[1], row[2], row[3]), row[4]
    a, b = rows[k - 1].tolist(), rows[k].tolist()
    w = (ts - a[0]) / (b[0] - a[0])
    xyz = (a[1] + w * (b[1] - a[1]), a[2] + w * (b[2] - a[2]), a[3] + w * (b[3] - a[3]))
    return xyz, max(a[4], b[4])


def _travelled(points: np.ndarray, accs: np.ndarray) -> float:
    """The largest distance from the first point, less the accuracy of coarse points."""
    slack = np.where(accs > evidence.COARSE_M, accs, 0.0)
    reach = np.sqrt(((points - points[0]) ** 2).sum(axis=1)) - slack - slack[0]
    return float(reach.max())


def holds(run: list, ts: float, victim: VictimInfo) -> bool:
    """Whether the run shows following over the window ending at `ts`."""
    rules = victim.rules
    if not run or run[0][0] > ts - rules.follow_window_s:
        return False
    rows = np.array(run, dtype=np.float64)
    need = rules.follow_min_travel_m
    return (
        _travelled(rows[:, 1:4], rows[:, 4]) >= need
        and _travelled(rows[:, 5:8], rows[:, 8]) >= need
    )


def worth(track: VictimTrack, distance: float, victim: VictimInfo, accs: float) -> bool:
    """Whether the rule has anything to do: a run or an episode, or within reach
    (`accs`: the tag's and the device's accuracy; COARSE_M more for interpolation)."""
    if track.follow_run or track.follow is not None:
        return True
    return distance - accs - evidence.COARSE_M <= victim.rules.follow_m


def step(
    track: VictimTrack,
    victim: VictimInfo,
    view: FixView,
    xyz: tuple[float, float, float],
    device_track: bytes,
    device_fallback: tuple[tuple[float, float, float], float],
    em: Emitter,
) -> None:
    """One plausible tag fix with a fresh device position."""
    rules, fix = victim.rules, view.fix
    ts = fix.ts
    at = device_at(device_track, ts) or device_fallback
    dev_xyz, dev_acc = at
    d = math.dist(xyz, dev_xyz)
    coarse = evidence.coarse(fix) or dev_acc > evidence.COARSE_M
    slack = fix.acc + dev_acc if coarse else 0.0
    run = track.follow_run
    if run and ts - run[-1][0] > rules.victim_fresh_s:
        run.clear()  # a gap: what happened in it is unknown
    if d - slack > rules.follow_m:
        run.clear()
    elif not run or ts > run[-1][0]:
        run.append((ts, *xyz, fix.acc, *dev_xyz, dev_acc))
        start = ts - rules.follow_window_s
        while len(run) > 1 and run[1][0] <= start:
            run.pop(0)  # the newest sample at or before the window's start is kept
    held = holds(run, ts, victim)
    if held:
        track.follow_held = ts
    where = f"{d:.0f} m from victim {victim.victim}'s device"
    if track.follow is None:
        if held and d > victim.radius_m and track.proximity is None:
            ep_id = alert_id(victim.case, view.tag, FOLLOWING, victim.victim, ts)
            track.follow = Episode(ep_id, ts, WARNING)
            minutes = rules.follow_window_s / 60
            emit(
                em,
                FOLLOWING,
                victim,
                view,
                track.follow,
                OPEN,
                d,
                f"moving with {where} for {minutes:.0f} min",
                ts,
            )
        return
    if not held:
        lapse(track, victim, view, em, d, where)


def lapse(
    track: VictimTrack,
    victim: VictimInfo,
    view: FixView,
    em: Emitter,
    distance: float | None,
    where: str,
) -> None:
    """The condition does not hold at this fix: resolve an open episode once it has
    not held for `follow_window_s`."""
    episode = track.follow
    if episode is None:
        return
    last = track.follow_held if track.follow_held is not None else episode.opened
    if view.fix.ts - last >= victim.rules.follow_window_s:
        detail = f"no longer following: {where}"
        emit(em, FOLLOWING, victim, view, episode, RESOLVED, distance, detail)
        track.follow = None
        track.follow_held = None


def stale(track: VictimTrack, victim: VictimInfo, view: FixView, em: Emitter) -> None:
    """The device's position is stale at this tag fix: the run breaks; an open
    episode resolves once nothing has shown following for a window."""
    track.follow_run.clear()
    where = f"victim {victim.victim}'s device position is stale"
    lapse(track, victim, view, em, None, where)
