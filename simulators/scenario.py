"""Scenario files (TOML): cases, simulated tags and victim devices, scripts, expectations.

    [scenario]
    name = "breach"
    cases = "../cases"                  # folder or file, relative to this file
    start = "2026-11-02T10:00:00Z"      # scenario time 0: schedules are deterministic
    duration_s = 1800
    seed = 1

    [[tags]]                            # also [[victims]] (id = the victim's device)
    id = "T-1001"
    interval_s = 60
    [[tags.moves]]                      # movement segments, each from where the last left off
    at = 0
    model = "stationary"
    point = [-0.1200, 51.5073]
    protocol = "traccar"                # optional: "tagwatch" (default); a tag "traccar"
                                        # (POSTed to /ingest/traccar), a victim device
                                        # "owntracks" with owntracks = "USER/DEVICE"
    [[tags.faults]]                     # device faults over time windows
    kind = "tamper"
    at = 600
    until = 900

    [[expect]]                          # alert ts within [start+after_s, +within_s]
    type = "zone.breach"
    tag = "T-1001"
    zone = "home"
    after_s = 600
    within_s = 300
    [[forbid]]                          # no such alert (any state) in the window
    type = "tag.jump"

Every error is a `ScenarioError` naming the file and the key.
"""

from __future__ import annotations

import heapq
import itertools
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulators.device import (
    FAULT_KINDS,
    PROTOCOLS,
    UPLOAD_MODES,
    Device,
    DeviceSpec,
    Emission,
    Fault,
)
from simulators.movement import (
    SPEEDS_MPS,
    Approach,
    Follow,
    Loiter,
    LonLat,
    Movement,
    Route,
    Stationary,
    Track,
    read_trace,
)
from tagwatch.wire import Topics, parse_rfc3339

ALERT_TYPES = frozenset({
    "zone.warning", "zone.breach", "zone.exit", "zone.late_breach", "approach", "proximity",
    "curfew.breach", "tag.tamper", "tag.battery_low", "tag.no_fix", "tag.no_comms", "tag.jump",
    "pattern.loitering", "pattern.repeated_approach", "pattern.following",
})
MODELS = frozenset({"stationary", "route", "walk", "cycle", "drive", "approach", "loiter",
                    "follow", "trace"})


class ScenarioError(ValueError):
    def __init__(self, file: Path | str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}")
        self.file, self.key = str(file), key


class _Table:
    """A TOML table read key by key; unknown keys are an error naming their path."""

    def __init__(self, file: Path, where: str, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise ScenarioError(file, where, "expected a table")
        self.file, self.where, self.doc, self.used = file, where, doc, set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, message: str) -> ScenarioError:
        return ScenarioError(self.file, self.key(name), message)

    def get(self, name: str, kind: type | tuple, default: Any = ..., check=None) -> Any:
        self.used.add(name)
        if name not in self.doc:
            if default is ...:
                raise self.fail(name, "is required")
            return default
        value = self.doc[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise self.fail(name, f"expected {'/'.join(k.__name__ for k in kinds)}, "
                                  f"got {value!r}")
        if check is not None and not check(value):
            raise self.fail(name, f"value {value!r} is out of range")
        return value

    def point(self, name: str, default: Any = ...) -> LonLat | None:
        value = self.get(name, list, default)
        if value is None or value is default:
            return value
        return _lonlat(value, self, name)

    def tables(self, name: str) -> list[_Table]:
        self.used.add(name)
        raw = self.doc.get(name, [])
        if not isinstance(raw, list):
            raise self.fail(name, "expected an array of tables ([[...]])")
        return [_Table(self.file, f"{self.key(name)}[{i}]", t) for i, t in enumerate(raw)]

    def done(self) -> None:
        extra = sorted(set(self.doc) - self.used)
        if extra:
            raise self.fail(extra[0], "unknown key")


def _lonlat(value: Any, table: _Table, name: str) -> LonLat:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise table.fail(name, f"expected [lon, lat], got {value!r}")
    lon, lat = float(value[0]), float(value[1])
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise table.fail(name, f"[lon, lat] {value!r} is out of range")
    return lon, lat


# ---------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Expect:
    type: str
    tag: str | None = None
    zone: str | None = None
    victim: str | None = None
    state: str | None = None
    severity: str | None = None
    confidence: str | None = None
    after_s: float = 0.0
    within_s: float = math.inf
    wall_s: float | None = None  # expect only: arrival at most this long after the window ends
    where: str = ""  # "expect[2]": for messages

    def describe(self) -> str:
        parts = [self.type]
        parts += [f"{k}={v}" for k in ("tag", "zone", "victim", "state", "severity", "confidence")
                  if (v := getattr(self, k)) is not None]
        end = "end" if math.isinf(self.within_s) else f"{self.after_s + self.within_s:g}s"
        return f"{' '.join(parts)} in [{self.after_s:g}s, {end}]"

    def matches(self, alert: dict, t0: float) -> bool:
        for k in ("type", "tag", "zone", "victim", "state", "severity", "confidence"):
            want = getattr(self, k)
            if want is not None and alert.get(k) != want:
                return False
        try:
            t = parse_rfc3339(str(alert.get("ts")).replace("Z", "+00:00")) - t0
        except ValueError:
            return False
        return self.after_s <= t <= self.after_s + self.within_s


def _expect(table: _Table, forbid: bool) -> Expect:
    kind = table.get("type", str, check=lambda v: v in ALERT_TYPES)
    opt = {k: table.get(k, str, None) for k in ("tag", "zone", "victim", "severity",
                                                 "confidence")}
    state = table.get("state", str, None if forbid else "open")
    after = table.get("after_s", float, 0.0, check=lambda v: v >= 0)
    within = table.get("within_s", float, math.inf if forbid else ..., check=lambda v: v >= 0)
    wall = None if forbid else table.get("wall_s", float, None, check=lambda v: v > 0)
    table.done()
    return Expect(kind, state=state, after_s=after, within_s=within, wall_s=wall,
                  where=table.where, **opt)


# ---------------------------------------------------------------- devices and moves

MoveBuilder = Callable[[LonLat | None, dict[str, Track], np.random.Generator], Movement]


@dataclass
class DeviceScript:
    spec: DeviceSpec
    moves: list[tuple[float, MoveBuilder]]
    where: str


def _move(table: _Table, base: Path) -> tuple[float, MoveBuilder]:
    at = table.get("at", float, 0.0, check=lambda v: v >= 0)
    model = table.get("model", str, check=lambda v: v in MODELS)
    where = table.where

    def need_origin(origin: LonLat | None, given: LonLat | None, name: str) -> LonLat:
        if given is not None:
            return given
        if origin is None:
            raise ScenarioError(table.file, f"{where}.{name}", "is required for the first move")
        return origin

    if model == "stationary":
        point = table.point("point", None)
        table.done()
        return at, lambda o, _t, _r: Stationary(need_origin(o, point, "point"))
    if model in ("route", *SPEEDS_MPS):
        pts = [_lonlat(p, table, "waypoints") for p in table.get("waypoints", list)]
        speed = table.get("speed_mps", float, SPEEDS_MPS.get(model, ...), check=lambda v: v > 0)
        loop = table.get("loop", bool, False)
        table.done()
        if not pts:
            raise table.fail("waypoints", "needs at least one waypoint")

        def route(o, _t, _r):
            full = ([o] if o is not None and o != pts[0] else []) + pts
            if len(full) < 2:
                raise ScenarioError(table.file, f"{where}.waypoints", "needs 2 points to go")
            return Route(full, speed, loop)
        return at, route
    if model == "approach":
        target = table.point("target")
        start = table.point("from", None)
        speed = table.get("speed_mps", float, check=lambda v: v > 0)
        stop = table.get("stop_m", float, 0.0, check=lambda v: v >= 0)
        table.done()
        return at, lambda o, _t, _r: Approach(need_origin(o, start, "from"), target, speed, stop)
    if model == "loiter":
        center = table.point("center", None)
        radius = table.get("radius_m", float, check=lambda v: v > 0)
        period = table.get("period_s", float, 600.0, check=lambda v: v > 0)
        table.done()
        return at, lambda o, _t, r: Loiter(need_origin(o, center, "center"), radius, r, period)
    if model == "follow":
        leader = table.get("leader", str)
        lag = table.get("lag_s", float, check=lambda v: v >= 0)
        table.done()

        def follow(_o, tracks, _r):
            if leader not in tracks:
                raise ScenarioError(table.file, f"{where}.leader",
                                    f"{leader!r} is not a victim device or an earlier tag")
            return Follow(tracks[leader].position, at, lag)
        return at, follow
    file = base / table.get("file", str)
    tag = table.get("tag", str, None)
    table.done()
    try:
        trace = read_trace(file, tag)
    except (OSError, ValueError) as exc:
        raise table.fail("file", str(exc)) from None
    return at, lambda _o, _t, _r: trace


def _fault(table: _Table) -> Fault:
    kind = table.get("kind", str, check=lambda v: v in FAULT_KINDS)
    at = table.get("at", float, check=lambda v: v >= 0)
    until = table.get("until", float, math.inf)  # a jump: the first fix from `at`
    if until <= at:
        raise table.fail("until", f"{until:g} must be after at {at:g}")
    fields: dict[str, Any] = {}
    for name, kinds, check in (
        ("upload", str, lambda v: v in UPLOAD_MODES),
        ("upload_delay_s", float, lambda v: v >= 0),
        ("shuffle", bool, None),
        ("rate", float, lambda v: 0 <= v <= 1),
        ("offset_s", float, None),
        ("distance_m", float, lambda v: v > 0),
        ("bearing_deg", float, None),
        ("pct", float, lambda v: 0 <= v <= 100),
        ("drain_pct_h", float, lambda v: v >= 0),
    ):
        if name in table.doc:
            fields[name] = table.get(name, kinds, check=check)
    table.done()
    return Fault(kind, at, until, **fields)


def _device(table: _Table, kind: str, base: Path) -> DeviceScript:
    spec = DeviceSpec(
        id=table.get("id", str, check=bool),
        kind=kind,
        interval_s=table.get("interval_s", float, 60.0, check=lambda v: v > 0),
        acc_m=table.get("acc_m", float, 8.0, check=lambda v: v > 0),
        outlier_rate=table.get("outlier_rate", float, 0.0, check=lambda v: 0 <= v <= 1),
        battery_pct=table.get("battery_pct", float, 90.0 if kind == "tag" else None,
                              check=lambda v: 0 <= v <= 100),
        drain_pct_h=table.get("drain_pct_h", float, 0.5, check=lambda v: v >= 0),
        seq=table.get("seq", bool, True),
        start_s=table.get("start_s", float, 0.0, check=lambda v: v >= 0),
        faults=[_fault(t) for t in table.tables("faults")],
        protocol=table.get("protocol", str, "tagwatch", check=lambda v: v in PROTOCOLS[kind]),
    )
    if spec.protocol == "owntracks":
        spec.owntracks = table.get(
            "owntracks", str, check=lambda v: v.count("/") == 1 and all(v.split("/"))
            and not any(c in v for c in "+#"))
    moves = [_move(t, base) for t in table.tables("moves")]
    if not moves:
        raise table.fail("moves", "needs at least one [[...moves]] segment")
    if any(b[0] < a[0] for a, b in itertools.pairwise(moves)):
        raise table.fail("moves", "segments must be in order of `at`")
    table.done()
    return DeviceScript(spec, moves, table.where)


# ---------------------------------------------------------------- the scenario


@dataclass
class Scenario:
    path: Path
    name: str
    description: str
    cases: Path
    start: float  # Unix seconds of scenario time 0
    duration_s: float
    seed: int
    wall_grace_s: float
    devices: list[DeviceScript] = field(default_factory=list)
    expects: list[Expect] = field(default_factory=list)
    forbids: list[Expect] = field(default_factory=list)

    def simulation(self, topics: Topics) -> Simulation:
        return Simulation(self, topics)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(path, "(file)", f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(path, "(file)", f"not valid TOML: {exc}") from None
    top = _Table(path, "", doc)
    head = _Table(path, "scenario", doc.get("scenario"))
    top.used.add("scenario")
    base = path.parent
    cases = (base / head.get("cases", str)).resolve()
    if not cases.exists():
        raise head.fail("cases", f"{cases} does not exist")
    start_text = head.get("start", str)
    try:
        start = parse_rfc3339(start_text.replace("Z", "+00:00"))
    except ValueError:
        raise head.fail("start", f"{start_text!r} is not RFC 3339 with an offset") from None
    scenario = Scenario(
        path=path,
        name=head.get("name", str, path.stem),
        description=head.get("description", str, ""),
        cases=cases,
        start=start,
        duration_s=head.get("duration_s", float, check=lambda v: v > 0),
        seed=head.get("seed", int, 0),
        wall_grace_s=head.get("wall_grace_s", float, 15.0, check=lambda v: v > 0),
    )
    head.done()
    scenario.devices = [_device(t, "victim", base) for t in top.tables("victims")]
    scenario.devices += [_device(t, "tag", base) for t in top.tables("tags")]
    scenario.expects = [_expect(t, False) for t in top.tables("expect")]
    scenario.forbids = [_expect(t, True) for t in top.tables("forbid")]
    top.done()
    ids = [d.spec.id for d in scenario.devices]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise ScenarioError(path, "tags/victims", f"id {dup!r} appears twice")
    scenario.simulation(Topics())  # builds every movement now, so errors surface at load
    return scenario


# ---------------------------------------------------------------- running the devices


class Simulation:
    """All devices of a scenario, stepped in scenario-time order (ties in file order)."""

    def __init__(self, scenario: Scenario, topics: Topics) -> None:
        self.scenario = scenario
        self.devices: dict[str, Device] = {}
        tracks: dict[str, Track] = {}
        seeds = np.random.SeedSequence(scenario.seed).spawn(len(scenario.devices))
        for script, seed in zip(scenario.devices, seeds, strict=True):
            rng = np.random.default_rng(seed)
            track = Track()
            for at, build in script.moves:
                track.add(at, lambda origin, b=build, r=rng: b(origin, tracks, r))
            tracks[script.spec.id] = track
            self.devices[script.spec.id] = Device(script.spec, track, topics, scenario.start, rng)
        self._order = {d: i for i, d in enumerate(self.devices)}

    def next_time(self) -> float:
        return min((d.due() for d in self.devices.values()), default=math.inf)

    def step(self) -> list[Emission]:
        """The messages of the earliest device(s) due, in send order."""
        t = self.next_time()
        out: list[Emission] = []
        for _, ident in heapq.nsmallest(
            len(self.devices), ((self._order[i], i) for i, d in self.devices.items()
                                if d.due() <= t)
        ):
            out.extend(self.devices[ident].step())
        return out

    def command(self, device: str, payload: bytes, now: float | None = None) -> str | None:
        target = self.devices.get(device)
        return None if target is None else target.command(payload, now)
