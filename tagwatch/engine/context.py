"""What a rule sees of one zone, one victim, and the fix being evaluated."""

from __future__ import annotations

from dataclasses import dataclass

from tagwatch.config import Rules
from tagwatch.wire import Fix


@dataclass(frozen=True, slots=True)
class ZoneInfo:
    key: str  # "case/zone": stable across case reloads
    case: str
    zone: str
    exclusion: bool
    warn_m: float
    victim: str | None
    rules: Rules

    @property
    def approach_only_m(self) -> float:
        """Beyond this distance only the approach rule can have something to say."""
        return max(self.warn_m, self.rules.loiter_m) + self.rules.exit_margin_m


@dataclass(frozen=True, slots=True)
class VictimInfo:
    key: str  # "case/victim"
    case: str
    victim: str
    device: str
    radius_m: float
    rules: Rules


class FixView:
    """One tag fix with its distance to the thing a rule is about.

    A slotted class rather than a dataclass: one is made per fix and zone on the
    hot path, and this is several times cheaper to create.
    """

    __slots__ = (
        "corroborated",
        "displaced",
        "distance",
        "exact",
        "fix",
        "held",
        "moving",
        "plausible",
        "tag",
        "through",
        "weight",
    )

    def __init__(
        self,
        tag: str,
        fix: Fix,
        distance: float,
        plausible: bool,
        exact: bool = True,
        weight: int = 1,
        displaced: bool = False,
        held: float = 0.0,
        corroborated: bool = False,
        moving: bool = False,
        through: bool = False,
    ) -> None:
        self.tag = tag
        self.fix = fix
        self.distance = distance  # signed metres, negative inside
        self.plausible = plausible  # False for a jumped fix: tested against zones, no speeds
        self.exact = exact  # False beyond the geometry horizon: a lower bound, no speeds
        self.weight = weight  # pieces of evidence of a breach when deep inside (evidence.py)
        self.displaced = displaced  # off the tag's motion (multipath?): it ends no breach
        # what a displaced fix is held back from being worth, should its run prove true
        self.held = held
        self.corroborated = corroborated  # ends a displaced run that proved true (motion)
        self.moving = moving  # on the track of a tag walking or faster (evidence.MOVING)
        self.through = through  # on one walk with the fix before the last and the last
