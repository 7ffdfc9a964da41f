"""The path of a fix, in one place: decode, order and dedupe, geometry, rules.

    messages -> decode (wire) -> per-tag order/dedupe (engine) -> geometry (zones, one
    vectorised call per batch) -> rules (engine, one fix at a time in arrival order)

The daemon and `tagwatch replay` both call `Pipeline.process`; only the clock
differs (wall-clock ticks in the daemon, event time in replay). Batching only
moves the geometry in front of the rules: every decision is the one that
processing the same messages one by one would make.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tagwatch.config import Rules
from tagwatch.engine.alerts import AlertRecord
from tagwatch.engine.core import DUPLICATE, LATE, Engine
from tagwatch.engine.emit import Emitter, Output
from tagwatch.wire import Fix, Rejection, Topics, decode_payload
from zones import ZoneSet, ecef


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    received: float | None = None  # receiving clock, Unix seconds (None: no future check)


@dataclass(frozen=True)
class Rejected:
    source: str  # the tag or device id of the topic ("" when the topic names none)
    rejection: Rejection
    received: float | None


@dataclass
class Result:
    records: list[AlertRecord] = field(default_factory=list)
    commands: list[tuple[str, bytes]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    accepted: list[tuple[Fix, bool]] = field(default_factory=list)  # (fix, late)
    duplicates: int = 0

    def rejected_by_reason(self) -> Counter:
        return Counter(r.rejection.reason for r in self.rejected)


@dataclass
class _Item:
    fix: Fix
    kind: str  # "live", "late" or "victim"
    row: int = -1  # index into the geometry batch


class Pipeline:
    def __init__(self, zoneset: ZoneSet, rules: Rules, topics: Topics, event_clock: bool) -> None:
        self.engine = Engine(zoneset, rules)
        self.rules = rules
        self.topics = topics
        self.event_clock = event_clock

    @property
    def zoneset(self) -> ZoneSet:
        return self.engine.zoneset

    def reload(self, zoneset: ZoneSet) -> None:
        self.engine.configure(zoneset)

    def process(self, messages: list[Inbound], raised: float | None = None) -> Result:
        result = Result()
        out = Output()
        items = self._decode(messages, result)
        lon, lat, ts, tag_idx = self._positions(items)
        xyz = ecef(lon, lat) if len(lon) else np.zeros((0, 3))
        rows = self._geometry(tag_idx, lon, lat, ts, xyz)
        self._rules(items, rows, xyz, Emitter(out, raised))
        result.records, result.commands = out.records, out.commands
        return result

    def checkpoints(self) -> dict[str, bytes]:
        """Rule state changed since the last call, to commit with the batch's effects."""
        return self.engine.checkpoints()

    def restore(self, checkpoints: dict[str, bytes]) -> None:
        self.engine.restore(checkpoints)

    def tick(self, now: float, raised: float | None = None) -> Result:
        """Advance the watchdog clock (the daemon's wall-clock tick)."""
        out = Output()
        self.engine.advance(now, Emitter(out, raised))
        return Result(
            records=out.records, commands=out.commands, checkpoints=self.engine.checkpoints()
        )

    def _decode(self, messages: list[Inbound], result: Result) -> list[_Item]:
        items: list[_Item] = []
        engine = self.engine
        max_future = self.rules.max_future_s
        for msg in messages:
            parsed = self.topics.parse(msg.topic)
            if parsed is None:
                result.rejected.append(
                    _reject("", "unknown_topic", f"topic {msg.topic!r} is not a fix topic", msg)
                )
                continue
            source, ident = parsed
            if source == "tag":
                if not engine.knows_tag(ident):
                    result.rejected.append(
                        _reject(ident, "unknown_tag", f"tag {ident!r} belongs to no case", msg)
                    )
                    continue
                if engine.seen_payload(ident, _digest(msg.payload)):
                    result.duplicates += 1
                    continue
            elif not engine.knows_device(ident):
                result.rejected.append(
                    _reject(ident, "unknown_device", f"device {ident!r} belongs to no victim", msg)
                )
                continue
            fixes, rejections = decode_payload(source, ident, msg.payload, msg.received, max_future)
            result.rejected.extend(Rejected(ident, r, msg.received) for r in rejections)
            for fix in fixes:
                if source == "victim":
                    if fix.lat is not None:
                        items.append(_Item(fix, "victim"))
                    continue
                kind = engine.classify(fix)
                if kind == DUPLICATE:
                    result.duplicates += 1
                    continue
                items.append(_Item(fix, kind))
                result.accepted.append((fix, kind == LATE))
        return items

    def _positions(self, items: list[_Item]):
        positioned = [it for it in items if it.fix.lat is not None]
        for i, it in enumerate(positioned):
            it.row = i
        zs = self.engine.zoneset
        lon = np.fromiter((it.fix.lon for it in positioned), np.float64, len(positioned))
        lat = np.fromiter((it.fix.lat for it in positioned), np.float64, len(positioned))
        ts = np.fromiter((it.fix.ts for it in positioned), np.float64, len(positioned))
        tag_idx = np.fromiter(
            (zs.tag_index(it.fix.tag) if it.kind != "victim" else -1 for it in positioned),
            np.int64,
            len(positioned),
        )
        return lon, lat, ts, tag_idx

    def _geometry(self, tag_idx, lon, lat, ts, xyz) -> tuple:
        ev = self.engine.zoneset.evaluate(tag_idx, lon, lat, ts, self.engine.horizon_m, xyz)
        starts = np.searchsorted(ev.fix, np.arange(len(lon) + 1)).tolist()
        return (
            starts,
            ev.zone.tolist(),
            ev.inside.tolist(),
            ev.distance_m.tolist(),
            ev.active.tolist(),
        )

    def _rules(self, items: list[_Item], rows: tuple, xyz: np.ndarray, em: Emitter) -> None:
        starts, zone, inside, distance, active = rows
        xyz_rows = xyz.tolist()
        engine = self.engine
        for it in items:
            fix = it.fix
            if self.event_clock and it.kind != LATE:
                engine.advance(fix.ts, em)
            point = tuple(xyz_rows[it.row]) if it.row >= 0 else None
            if it.kind == "victim":
                engine.victim_fix(fix, point, em)
                continue
            s, e = (starts[it.row], starts[it.row + 1]) if it.row >= 0 else (0, 0)
            fix_rows = zip(zone[s:e], inside[s:e], distance[s:e], active[s:e], strict=True)
            if it.kind == LATE:
                engine.late_fix(fix, fix_rows, em)
            else:
                engine.end_late_runs(fix.tag)
                engine.tag_fix(fix, point, fix_rows, em)


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=8).digest()


def _reject(source: str, reason: str, detail: str, msg: Inbound) -> Rejected:
    text = msg.payload[:4096].decode("utf-8", errors="replace")[:1024]
    return Rejected(source, Rejection(reason=reason, detail=detail, payload=text), msg.received)
