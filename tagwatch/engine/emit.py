"""Collects what the engine decides for one batch: alert records and tag commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from tagwatch.engine.alerts import AlertRecord, rounded
from tagwatch.wire import Fix, rfc3339


@dataclass
class Output:
    records: list[AlertRecord] = field(default_factory=list)
    commands: list[tuple[str, bytes]] = field(default_factory=list)  # (tag, payload)


class Emitter:
    """Makes alert records. `raised` is the decision's wall-clock time, or None
    in replay, where a record is raised at its own event time (deterministic)."""

    def __init__(self, out: Output, raised: float | None) -> None:
        self.out = out
        self.raised = raised

    def record(
        self,
        *,
        id: str,
        type: str,
        severity: str,
        state: str,
        case: str,
        tag: str,
        ts: float,
        fix: Fix | None = None,
        zone: str | None = None,
        victim: str | None = None,
        distance: float | None = None,
        closing: float | None = None,
        eta: float | None = None,
        confidence: str | None = None,
        detail: str = "",
    ) -> None:
        has_position = fix is not None and fix.lat is not None
        self.out.records.append(
            AlertRecord(
                id=id,
                type=type,
                severity=severity,
                state=state,
                case=case,
                tag=tag,
                zone=zone,
                victim=victim,
                ts=rfc3339(ts),
                raised=rfc3339(self.raised if self.raised is not None else ts),
                lat=fix.lat if has_position else None,
                lon=fix.lon if has_position else None,
                acc=fix.acc if has_position else None,
                distance_m=rounded(distance),
                closing_mps=rounded(closing, 2),
                eta_s=rounded(eta, 0),
                confidence=confidence,
                detail=detail,
            )
        )

    def command(self, tag: str, payload: bytes) -> None:
        self.out.commands.append((tag, payload))
