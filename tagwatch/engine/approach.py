"""Approach: closing speed by least squares over a time window, and time to arrival.

The same rule serves zones and victim devices. A window holds (ts, distance,
acc) of plausible fixes within the approach horizon. The closing speed must
exceed `approach_min_mps` and also twice its own standard error, so GPS
jitter or an outlier near a tag standing still never looks like an approach.
"""

from __future__ import annotations

import math
from operator import mul

from tagwatch.config import Rules
from tagwatch.engine.alerts import (
    CRITICAL,
    OPEN,
    RESOLVED,
    SEVERITY_RANK,
    UPDATED,
    WARNING,
    alert_id,
)
from tagwatch.engine.context import FixView
from tagwatch.engine.emit import Emitter
from tagwatch.engine.state import Episode

APPROACH = "approach"


Fit = tuple[float, float, list[float], list[float]]  # slope, sxx, centred ts and distances


def fit(window: list[tuple[float, float, float]]) -> Fit | None:
    """Least-squares line of distance over time; None with fewer than 3 fixes (or all
    at one time). The closing speed is minus the slope."""
    n = len(window)
    if n < 3:
        return None
    # Written with lists and C-level maps (this runs for every fix near a zone), but
    # the same floating-point operations in the same order as the textbook form.
    ts, ds, _ = zip(*window, strict=True)
    t0 = ts[0]
    ts = [t - t0 for t in ts]
    t_mean = sum(ts) / n
    d_mean = sum(ds) / n
    ts = [t - t_mean for t in ts]  # centred times
    sxx = sum([t**2 for t in ts])
    if sxx <= 0:
        return None
    ds = [d - d_mean for d in ds]  # centred distances
    return sum(map(mul, ts, ds)) / sxx, sxx, ts, ds


def standard_error(window: list[tuple[float, float, float]], line: Fit) -> float:
    """The standard error of the closing speed: the larger of two estimates, from the
    fixes' reported accuracy and from the scatter of the fixes about the fitted line.
    An overconfident outlier (far off, small `acc`) fools the first but not the second."""
    slope, sxx, ts, ds = line
    n = len(window)
    residual = sum([(d - slope * t) ** 2 for t, d in zip(ts, ds, strict=True)])
    scatter = math.sqrt(residual / (n - 2))
    reported = sum([w[2] for w in window]) / n
    return max(scatter, reported) / math.sqrt(sxx)


def update_window(window: list, ts: float, distance: float, acc: float, rules: Rules) -> None:
    window.append((ts, distance, acc))
    horizon = ts - rules.approach_window_s
    while window and window[0][0] < horizon:
        window.pop(0)


def assess(
    window: list, distance: float, rules: Rules
) -> tuple[str | None, float | None, float | None]:
    """(severity or None, closing speed, eta) for the current window."""
    line = fit(window)
    if line is None:
        return None, None, None
    closing = -line[0]
    if distance <= 0 or distance > rules.approach_max_m or closing < rules.approach_min_mps:
        return None, closing, None  # whatever the standard error (only computed if needed)
    if closing < 2 * standard_error(window, line):
        return None, closing, None
    eta = distance / closing
    if eta > rules.eta_max_s:
        return None, closing, eta
    return (CRITICAL if eta <= rules.eta_critical_s else WARNING), closing, eta


def step(
    track, severity, closing, rules: Rules, distance: float
) -> tuple[str | None, Episode | None]:
    """Advance an approach episode; returns (state to publish or None, episode)."""
    episode = track.approach
    if severity is not None:
        track.approach_low_run = 0
        if episode is None:
            return OPEN, None
        if SEVERITY_RANK[severity] > SEVERITY_RANK[episode.severity]:
            return UPDATED, episode
        return None, episode
    if episode is None:
        return None, None
    slow = closing is None or closing < rules.approach_min_mps / 2
    away = distance > rules.approach_max_m + rules.exit_margin_m
    if (closing is not None and slow) or away:
        track.approach_low_run += 1
    else:
        track.approach_low_run = 0
    if track.approach_low_run >= 2:
        return RESOLVED, episode
    return None, episode


def follow(
    track,
    view: FixView,
    rules: Rules,
    em: Emitter,
    *,
    case: str,
    zone: str | None,
    victim: str | None,
    label: str,
) -> bool:
    """Advance the approach episode of one zone or victim-device track; True when opened.

    `label` names what is approached in the detail ("zone home", "victim V-01").
    """
    d = view.distance
    if not view.exact:
        track.window.clear()  # beyond the horizon distances are bounds, not measurements
    elif view.plausible:
        update_window(track.window, view.fix.ts, d, view.fix.acc, rules)
    severity, closing, eta = assess(track.window, d, rules)
    state, episode = step(track, severity, closing, rules, d)
    if state is None:
        return False
    if state == OPEN:
        ep_id = alert_id(case, view.tag, APPROACH, zone or victim, view.fix.ts)
        track.approach = episode = Episode(ep_id, view.fix.ts, severity)
    elif state == UPDATED:
        episode.severity = severity
    if state == RESOLVED:
        detail, eta = f"no longer closing on {label}", None
        track.approach = None
        track.approach_low_run = 0
    else:
        detail = f"closing on {label} at {closing:.1f} m/s, arrival in {eta:.0f} s"
    em.record(
        id=episode.id,
        type=APPROACH,
        severity=episode.severity,
        state=state,
        case=case,
        tag=view.tag,
        ts=view.fix.ts,
        fix=view.fix,
        zone=zone,
        victim=victim,
        distance=d,
        closing=closing,
        eta=eta,
        detail=detail,
    )
    return state == OPEN
