"""Print the worst errors of `ZoneSet.evaluate` per place against the geodesic references.

Run from the project root: `.venv/bin/python -m tests.accuracy_report`.
Same zones, fixes and references as tests/test_zones_accuracy.py (not collected by pytest).
"""

from __future__ import annotations

import numpy as np

from tests.test_zones_accuracy import (
    ABS_TOL_M,
    INSIDE_MARGIN_M,
    PLACES,
    REL_TOL,
    place_checks,
)

REL_FLOOR_M = 100.0  # relative errors are only meaningful away from the boundary


def place_row(place: str) -> tuple[str, int, float, float, float, float, int]:
    checks = place_checks(place)
    ref = np.concatenate([c.ref_distance for c in checks])
    err = np.concatenate([c.abs_error for c in checks])
    allowed = np.concatenate([c.allowed for c in checks])
    far = np.abs(ref) >= REL_FLOOR_M
    near = np.abs(ref) < REL_FLOOR_M
    wrong_side = sum(
        int(np.count_nonzero((np.abs(c.ref_distance) > INSIDE_MARGIN_M)
                             & (c.got_inside != c.ref_inside)))
        for c in checks
    )  # fmt: skip
    return (
        place,
        len(ref),
        float(err.max()),
        float(err[near].max()) if near.any() else float("nan"),
        float((err[far] / np.abs(ref[far])).max()) if far.any() else float("nan"),
        float((err / allowed).max()),
        wrong_side,
    )


def main() -> None:
    print(f"target: |error| <= {ABS_TOL_M} m + {REL_TOL:.1%} of the distance, fixes 1 m .. 20 km")
    header = (
        f"{'place':8} {'fixes':>6} {'worst abs (m)':>14} {'worst abs <100m':>16} "
        f"{'worst rel >=100m':>17} {'worst err/allowed':>18} {'wrong side':>11}"
    )
    print(header)
    print("-" * len(header))
    for place in PLACES:
        name, n, worst, worst_near, rel, ratio, wrong = place_row(place)
        print(
            f"{name:8} {n:6d} {worst:14.4f} {worst_near:16.2e} {rel:17.2e} {ratio:18.4f} "
            f"{wrong:11d}"
        )


if __name__ == "__main__":
    main()
