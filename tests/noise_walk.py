"""A long seeded walk past and through zones, with GPS noise and overconfident outliers.

The walker goes from zone to zone: through each zone's centre (a real stay
inside), or past it at 30 to 150 m from the boundary (never inside). Every
fix gets Gaussian noise (sigma 8 m per axis); 3% are outliers 50 to 200 m
off reporting acc 5 to 10 m. Truth is known, so each confirmed breach can be
judged: false when no true position of its episode, up to confirmation, was
inside and every fix of it that looked inside was an outlier (a walk that
grazes the boundary within a few metres can be confirmed by plain noise;
that is not counted as false); a stay (>= 2 consecutive true positions inside a zone) is missed when
no confirmed breach episode of that zone overlapped it (confirmed by its end,
not resolved before its start). Two-fix grazes a few metres deep cannot be
told from noise by any rule; they are counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagwatch.wire import rfc3339
from tests.tracks import CENTRE, case_doc, circle, distance_m, fix, offset, pipeline, tag_msg

T0 = 1_783_332_000.0  # 2026-07-06T10:00:00Z
EVERY_S, SPEED = 15.0, 1.4
DEEP_M = 8.0  # one sigma of the noise: shallower grazes are reported, not asserted
ZONES = [  # name, centre, radius
    (f"z{i}", offset(CENTRE, 360 * i / 6, 700 + 150 * (i % 2)), 60.0 + 20 * i) for i in range(6)
]
DOC = case_doc([circle(name, c, r, warn_m=50) for name, c, r in ZONES])


def _walk(rng: np.random.Generator, legs: int):
    """True positions and, per position, the zone it is inside (or None)."""
    here = CENTRE
    points: list[tuple[float, float]] = []
    for _ in range(legs):
        _name, centre, radius = ZONES[int(rng.integers(len(ZONES)))]
        through = rng.random() < 0.5
        # aim at the centre, or at a point beside it that the straight line passes
        miss = 0.0 if through else radius + float(rng.uniform(30, 150))
        target = offset(centre, float(rng.uniform(0, 360)), miss)
        total = distance_m(here, target)
        az = _azimuth(here, target)
        steps = max(1, int(total / (SPEED * EVERY_S)))
        points += [offset(here, az, total * k / steps) for k in range(1, steps + 1)]
        here = target
        if through:  # linger inside a few minutes
            points += [offset(centre, float(rng.uniform(0, 360)), radius * 0.5)] * int(
                rng.integers(2, 12)
            )
    inside = [_inside_zone(p) for p in points]
    return points, inside


def _azimuth(a, b) -> float:
    from tests.tracks import GEOD

    return float(GEOD.inv(a[0], a[1], b[0], b[1])[0])


def _inside_zone(p) -> str | None:
    for name, centre, radius in ZONES:
        if distance_m(p, centre) <= radius:
            return name
    return None


def _observe(points, rng: np.random.Generator):
    out, accs, outlier = [], [], []
    for p in points:
        outlier.append(bool(rng.random() < 0.03))
        if outlier[-1]:
            out.append(offset(p, float(rng.uniform(0, 360)), float(rng.uniform(50, 200))))
            accs.append(float(rng.uniform(5, 10)))
        else:
            e, n = rng.normal(0, 8.0, 2)
            out.append(offset(p, float(np.degrees(np.arctan2(e, n))), float(np.hypot(e, n))))
            accs.append(float(np.clip(rng.normal(10, 3), 4, 25)))
    return out, accs, outlier


@dataclass(frozen=True)
class Counts:
    false: int  # confirmed breaches caused by outliers alone
    missed: int  # stays reaching more than DEEP_M inside with no confirmed breach during them
    grazes_missed: int  # stays never deeper than DEEP_M with no confirmed breach
    stays: int
    fixes: int


def count_false_and_missed(seed: int, legs: int) -> Counts:
    """Judge every confirmed breach and every true stay of one seeded walk."""
    rng = np.random.default_rng(seed)
    truth, inside = _walk(rng, legs)
    seen, accs, outlier = _observe(truth, rng)
    fixes = [
        fix(T0 + EVERY_S * i, p, a, seq=i) for i, (p, a) in enumerate(zip(seen, accs, strict=True))
    ]
    result = pipeline(DOC).process([tag_msg(f) for f in fixes])
    index = {rfc3339(f["ts"]): i for i, f in enumerate(fixes)}
    episodes = _confirmed_episodes(result.records, index, len(fixes))
    centres = {name: (c, r) for name, c, r in ZONES}
    # false: no true position inside, and every fix that looked inside was an outlier
    false = sum(
        1
        for z, a, b, _end in episodes
        if z not in inside[a : b + 1]
        and all(
            outlier[i]
            for i in range(a, b + 1)
            if distance_m(seen[i], centres[z][0]) <= centres[z][1]
        )
    )
    stays = _stays(inside)
    missed = [
        (a, b)
        for z, a, b in stays
        if not any(ez == z and eb <= b and end >= a for ez, _ea, eb, end in episodes)
    ]
    depth = [
        max(
            centres[inside[a]][1] - distance_m(truth[i], centres[inside[a]][0])
            for i in range(a, b + 1)
        )
        for a, b in missed
    ]
    deep = sum(1 for d in depth if d > DEEP_M)
    return Counts(false, deep, len(missed) - deep, len(stays), len(fixes))


def _confirmed_episodes(records, index: dict[str, int], n: int) -> list[tuple[str, int, int, int]]:
    """(zone, open index, confirm index, resolve index or n) of each confirmed breach."""
    opened: dict[str, int] = {}
    confirmed: dict[str, tuple[str, int, int]] = {}
    ended: dict[str, int] = {}
    for r in records:
        if r.type != "zone.breach":
            continue
        if r.state == "open":
            opened[r.id] = index[r.ts]
        elif r.state == "updated" and r.confidence == "confirmed":
            confirmed[r.id] = (r.zone, opened[r.id], index[r.ts])
        elif r.state == "resolved":
            ended[r.id] = index[r.ts]
    return [(z, a, b, ended.get(i, n)) for i, (z, a, b) in confirmed.items()]


def _stays(inside: list[str | None]) -> list[tuple[str, int, int]]:
    stays, start = [], 0
    for i in range(1, len(inside) + 1):
        if i == len(inside) or inside[i] != inside[start]:
            if inside[start] is not None and i - start >= 2:
                stays.append((inside[start], start, i - 1))
            start = i
    return stays
