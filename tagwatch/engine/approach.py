"""Approach: closing speed by least squares over a time window, and time to arrival.

The same rule serves zones and victim devices. A window holds (ts, distance,
acc) of plausible fixes within the approach horizon. The closing speed must
exceed `approach_min_mps` and also twice its own standard error (from the
fixes' reported accuracy), so GPS jitter of a tag standing still never looks
like an approach.
"""

from __future__ import annotations

import math

from tagwatch.config import Rules
from tagwatch.engine.alerts import CRITICAL, OPEN, RESOLVED, SEVERITY_RANK, UPDATED, WARNING
from tagwatch.engine.state import Episode

APPROACH = "approach"


def closing_speed(window: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """(closing speed m/s, its standard error), or None with fewer than 3 fixes."""
    n = len(window)
    if n < 3:
        return None
    t0 = window[0][0]
    st = sd = stt = std = sacc = 0.0
    for ts, d, acc in window:
        t = ts - t0
        st += t
        sd += d
        stt += t * t
        std += t * d
        sacc += acc
    sxx = stt - st * st / n
    if sxx <= 0:
        return None
    slope = (std - st * sd / n) / sxx
    return -slope, (sacc / n) / math.sqrt(sxx)


def update_window(window: list, ts: float, distance: float, acc: float, rules: Rules) -> None:
    window.append((ts, distance, acc))
    horizon = ts - rules.approach_window_s
    while window and window[0][0] < horizon:
        window.pop(0)


def assess(
    window: list, distance: float, rules: Rules
) -> tuple[str | None, float | None, float | None]:
    """(severity or None, closing speed, eta) for the current window."""
    speed = closing_speed(window)
    if speed is None:
        return None, None, None
    closing, stderr = speed
    if distance <= 0 or distance > rules.approach_max_m:
        return None, closing, None
    if closing < rules.approach_min_mps or closing < 2 * stderr:
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
