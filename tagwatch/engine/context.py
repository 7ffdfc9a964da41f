"""What a rule sees of one zone, one victim, and the fix being evaluated."""

from __future__ import annotations

from dataclasses import dataclass

from tagwatch.config import Rules
from tagwatch.wire import Fix


@dataclass(frozen=True)
class ZoneInfo:
    key: str  # "case/zone": stable across case reloads
    case: str
    zone: str
    exclusion: bool
    warn_m: float
    victim: str | None
    rules: Rules


@dataclass(frozen=True)
class VictimInfo:
    key: str  # "case/victim"
    case: str
    victim: str
    device: str
    radius_m: float
    rules: Rules


@dataclass(frozen=True)
class FixView:
    """One tag fix with its distance to the thing a rule is about."""

    tag: str
    fix: Fix
    distance: float  # signed metres, negative inside
    plausible: bool  # False for a jumped fix: tested against zones, not used for speeds
