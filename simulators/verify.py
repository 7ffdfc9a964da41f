"""Checking the alerts a scenario produced against its expectations.

An expectation is met by an alert record that matches it (type, and any of
tag, zone, victim, state, severity, confidence given) whose `ts` lies in its
scenario-time window; in a live run it must also arrive in time on the wall
clock: at most `wall_s` (default: the scenario's `wall_grace_s`) after the
runner had published everything up to the window's end. A forbidden record is
any record matching a `[[forbid]]` entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from simulators.scenario import Expect, Scenario
from tagwatch.wire import parse_rfc3339


@dataclass
class VerifyResult:
    scenario: str
    alerts: list[dict] = field(default_factory=list)  # every record, in arrival order
    met: list[tuple[Expect, dict]] = field(default_factory=list)
    late: list[tuple[Expect, dict, float]] = field(default_factory=list)  # (.., wall s late)
    missing: list[Expect] = field(default_factory=list)
    forbidden: list[tuple[Expect, dict]] = field(default_factory=list)
    published: int = 0  # MQTT messages sent

    @property
    def ok(self) -> bool:
        return not (self.missing or self.forbidden or self.late)

    def summary(self) -> str:
        lines = [f"scenario {self.scenario}: {len(self.alerts)} alert record(s) from "
                 f"{self.published} message(s); {len(self.met)} expected met, "
                 f"{len(self.missing)} missing, {len(self.late)} late, "
                 f"{len(self.forbidden)} forbidden"]
        lines += [f"  MISSING   {e.where}: {e.describe()}" for e in self.missing]
        lines += [f"  LATE      {e.where}: {e.describe()}: arrived {s:.1f} s after its wall "
                  f"deadline" for e, _, s in self.late]
        lines += [f"  FORBIDDEN {e.where}: {e.describe()}: got {a.get('id')} at {a.get('ts')}"
                  for e, a in self.forbidden]
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


class Verifier:
    def __init__(self, scenario: Scenario, wall_at: Callable[[float], float] | None = None):
        """`wall_at(t)`: the wall time by which scenario time t was published (live runs)."""
        self.scenario = scenario
        self.wall_at = wall_at
        self.result = VerifyResult(scenario.name)
        self._open = list(scenario.expects)
        self._late: dict[int, tuple[Expect, dict, float]] = {}

    def on_alert(self, alert: dict, wall_now: float | None = None) -> None:
        res, t0 = self.result, self.scenario.start
        res.alerts.append(alert)
        for rule in self.scenario.forbids:
            if rule.matches(alert, t0):
                res.forbidden.append((rule, alert))
        for rule in list(self._open):
            if not rule.matches(alert, t0):
                continue
            over = self._overdue(rule, wall_now)
            if over > 0:
                self._late.setdefault(id(rule), (rule, alert, over))
                continue
            self._open.remove(rule)
            self._late.pop(id(rule), None)
            res.met.append((rule, alert))

    def _overdue(self, rule: Expect, wall_now: float | None) -> float:
        if self.wall_at is None or wall_now is None:
            return 0.0
        return wall_now - self.deadline(rule)

    def deadline(self, rule: Expect) -> float:
        assert self.wall_at is not None
        end = min(rule.after_s + rule.within_s, self.scenario.duration_s)
        grace = rule.wall_s if rule.wall_s is not None else self.scenario.wall_grace_s
        return self.wall_at(end) + grace

    @property
    def pending(self) -> list[Expect]:
        return list(self._open)

    def finish(self) -> VerifyResult:
        res = self.result
        res.late = [self._late[id(r)] for r in self._open if id(r) in self._late]
        res.missing = [r for r in self._open if id(r) not in self._late]
        return res


def alert_line(alert: dict, t0: float) -> str:
    """One readable line per alert record."""
    try:
        rel = f"{parse_rfc3339(str(alert['ts']).replace('Z', '+00:00')) - t0:+8.0f}s"
    except (KeyError, ValueError):
        rel = "       ?s"
    where = alert.get("zone") or (f"victim {alert['victim']}" if alert.get("victim") else "-")
    dist = alert.get("distance_m")
    extra = "" if dist is None or not math.isfinite(dist) else f" {dist:.0f} m"
    return (f"{rel} {alert.get('ts', '?')} {str(alert.get('state', '?')).upper():<12} "
            f"{alert.get('severity', '?'):<8} {alert.get('type', '?'):<26} "
            f"{alert.get('case', '?')}/{alert.get('tag', '?')} {where}{extra}"
            f"  {alert.get('detail', '')}")
