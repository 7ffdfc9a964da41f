"""`tagwatch bench quality`: alert quality under realistic GPS error, beside naive rules.

A seeded world: tags walking (and now and then driving) between places, each
tag with its own case of two exclusion circles and a victim phone. It visits
the zones, stands 40-250 m outside them, passes by, comes near the victim or
stands just beyond the victim's radius. Every fix gets the error real tags show
(issue 17): a Gauss-Markov error per tag (tau 30-120 s, sigma 4-12 m), urban
canyon multipath episodes (a bias of 30-150 m in one direction for 10-180 s
while `acc` stays 10-30 m) towards the zone while the tag stands outside it and
away from it while the tag is inside, honest bad fixes (`lbs` or indoor, `acc`
50-300 m) on tags and victim phones, report intervals of 30, 60 and 120 s, and
gaps of 5-20 minutes followed by a buffered upload (late, shuffled), some of
them over a whole visit (a dark visit) or starting right after its first fix.

Truth comes from the noise-free track: a visit is >= 60 s continuously inside a
zone; a critical breach is false when the true track stayed more than 20 m
outside the zone from the breach's opening to its confirmation. A visit of
>= 2 min with no critical breach is missed; one that no live fix taken during it
shows inside (a 120 s tag's two fixes of a 3-minute visit both outside, by
their error) cannot be alerted live by any rule and counts apart
(`missed_visits_unseen`); of the missed visits, those whose live fixes inside were
all within their own error of the edge (inside by at most acc / 1.515, one sigma: as
likely outside) are counted too (`missed_visits_shallow`): only a rule that takes such a
fix at face value alerts them; and those no breach was open for at all, not even a
probable one (`missed_visits_silent`). A true proximity is >= 60 s within the victim's radius;
one missed (no critical proximity) counts apart (`proximity_missed_unseen`) when
no live pair of good fixes (neither `lbs` nor acc > 100 m), paired as the literal
rule pairs them (a tag fix taken during it and the victim's latest fix within
180 s), is within the radius: the literal rule misses those too.

The fixes go through the real pipeline (tagwatch.pipeline, event time, as in
`tagwatch replay`). In the same run, on the same accepted fixes, two naive rules
are computed: literal (the first fix inside is critical) and two consecutive
fixes inside (the rule tagwatch shipped first); both end a breach as the
engine's hysteresis does (2 fixes clearly outside). Proximity is compared with
the literal rule (any pair of fixes within the victim's radius is critical).

The closed loop replays the 30 s and 60 s tags again with tags that obey the
engine's `rate` commands (as simulators/device.py does), fix by fix, and
measures the time from true entry to the confirmed breach.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import orjson

from tagwatch.bench.report import Progress
from tagwatch.config import Rules
from tagwatch.engine.evidence import COARSE_M, SIGMA_PER_ACC
from tagwatch.pipeline import Inbound, Pipeline
from tagwatch.wire import Topics, parse_rfc3339
from zones import ZoneSet, parse_case

T0 = 1_783_332_000.0  # 2026-07-06T10:00:00Z, a Monday
HOURS = 5.0
LOOP_HOURS = 3.0  # the closed loop goes fix by fix (rate commands): the first hours only
TAGS = 42
INTERVALS = (30.0, 60.0, 120.0)
RADIUS_V = 300.0  # the victims' mobile_radius_m
GOOD_ACC_M = COARSE_M  # a fix of larger acc (or `lbs`) cannot show a proximity by itself
VICTIM_EVERY_S = 60.0
WALK, DRIVE = 1.4, 11.0
VISIT_MIN_S, MUST_ALERT_S = 60.0, 120.0
FALSE_MARGIN_M = 20.0
EXIT_MARGIN_M = 20.0
TRUTH_STEP_S = 5.0
LONDON = (-0.1278, 51.5074)
TOPICS = Topics()


# -- the world -----------------------------------------------------------------------------


@dataclass
class Plan:
    """One tag's world in its local metric frame (east, north metres from its origin)."""

    tag: str
    case: str
    device: str
    interval: float
    origin: tuple[float, float]  # lon, lat
    zones: list[tuple[str, float, float, float]]  # name, x, y, radius
    victim: tuple[float, float]
    way_t: list[float] = field(default_factory=list)  # waypoints of the true track
    way_x: list[float] = field(default_factory=list)
    way_y: list[float] = field(default_factory=list)
    multipath: list[tuple[float, float, float, float]] = field(default_factory=list)  # t0 t1 bx by
    gaps: list[tuple[float, float, int]] = field(default_factory=list)  # t0, t1, upload after
    tau: float = 60.0
    sigma: float = 8.0
    planned_visits: list[tuple[str, float, float]] = field(default_factory=list)  # zone, in, out

    def at(self, t) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(t, self.way_t, self.way_x), np.interp(t, self.way_t, self.way_y)

    def lonlat(self, x, y):
        lon0, lat0 = self.origin
        phi = math.radians(lat0)
        m_lat = 111132.954 - 559.822 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)
        m_lon = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi)
        return lon0 + np.asarray(x) / m_lon, lat0 + np.asarray(y) / m_lat


def _bearing_vec(deg: float) -> tuple[float, float]:
    return math.sin(math.radians(deg)), math.cos(math.radians(deg))


def _plan(rng: np.random.Generator, i: int) -> Plan:
    origin = (LONDON[0] + (i % 7) * 0.09, LONDON[1] + (i // 7) * 0.055)  # ~6 km apart
    ra, rb = rng.uniform(60, 160, 2)
    bz = rng.uniform(0, 360)
    dz = rng.uniform(600, 1000)
    zb = (dz * _bearing_vec(bz)[0], dz * _bearing_vec(bz)[1])
    bv = bz + rng.uniform(100, 260)
    dv = rng.uniform(1300, 1800)
    plan = Plan(
        tag=f"T-{i:03d}",
        case=f"C-{i:03d}",
        device=f"VD-{i:03d}",
        interval=INTERVALS[i % 3],
        origin=origin,
        zones=[("a", 0.0, 0.0, float(ra)), ("b", zb[0], zb[1], float(rb))],
        victim=(dv * _bearing_vec(bv)[0], dv * _bearing_vec(bv)[1]),
        tau=float(rng.uniform(30, 120)),
        sigma=float(rng.uniform(4, 12)),
    )
    _itinerary(plan, rng)
    _gaps(plan, rng)
    return plan


def _itinerary(plan: Plan, rng: np.random.Generator) -> None:
    end = HOURS * 3600
    a = rng.uniform(0, 360)
    here = [400 * _bearing_vec(a)[0], 400 * _bearing_vec(a)[1]]
    t = 0.0
    plan.way_t, plan.way_x, plan.way_y = [t], [here[0]], [here[1]]

    def go(x: float, y: float, speed: float = WALK) -> float:
        nonlocal t
        dist = math.hypot(x - here[0], y - here[1])
        if dist > 1500 and speed == WALK:  # drive most of a long way
            f = (dist - 300) / dist
            go(here[0] + f * (x - here[0]), here[1] + f * (y - here[1]), DRIVE)
            dist = math.hypot(x - here[0], y - here[1])
        t += dist / speed
        here[0], here[1] = x, y
        plan.way_t.append(t), plan.way_x.append(x), plan.way_y.append(y)
        return t

    def stay(seconds: float) -> float:
        nonlocal t
        t += seconds
        plan.way_t.append(t), plan.way_x.append(here[0]), plan.way_y.append(here[1])
        return t

    def episode(start: float, stop: float, bearing: float) -> None:
        dur = rng.uniform(10, 180)
        t0 = rng.uniform(start, max(start, stop - dur))
        bias = rng.uniform(30, 150)
        ex, ny = _bearing_vec(bearing)
        plan.multipath.append((t0, min(stop, t0 + dur), bias * ex, bias * ny))

    def visit(zone) -> None:
        name, cx, cy, r = zone
        b = rng.uniform(0, 360)
        off = rng.uniform(0, 0.5) * r
        tx, ty = cx + off * _bearing_vec(b)[0], cy + off * _bearing_vec(b)[1]
        arrive = go(tx, ty)
        dwell = rng.uniform(60, 120) if rng.random() < 0.25 else rng.uniform(120, 900)
        leave = stay(dwell)
        plan.planned_visits.append((name, arrive - (r - off) / WALK, leave))
        if dwell >= 180 and rng.random() < 0.7:  # multipath jumps it out
            episode(arrive, leave, b + rng.uniform(-25, 25))
        out = r + rng.uniform(100, 400)
        b2 = rng.uniform(0, 360)
        go(cx + out * _bearing_vec(b2)[0], cy + out * _bearing_vec(b2)[1])

    while t < end:
        u = rng.random()
        zone = plan.zones[int(rng.integers(2))]
        if u < 0.3:
            visit(zone)
        elif u < 0.6:  # stand outside: multipath jumps it in
            _name, cx, cy, r = zone
            b = rng.uniform(0, 360)
            d = r + rng.uniform(40, 250)
            arrive = go(cx + d * _bearing_vec(b)[0], cy + d * _bearing_vec(b)[1])
            dwell = rng.uniform(300, 1200)
            leave = stay(dwell)
            for _ in range(1 if dwell < 600 else 2):
                if rng.random() < 0.9:
                    episode(arrive, leave, b + 180 + rng.uniform(-20, 20))
            if rng.random() < 0.12:
                visit(zone)  # then walks in
        elif u < 0.75:  # pass by: somewhere 300-1200 m away
            b, d = rng.uniform(0, 360), rng.uniform(300, 1200)
            go(here[0] + d * _bearing_vec(b)[0], here[1] + d * _bearing_vec(b)[1])
        elif u < 0.85:  # near the victim (a true proximity)
            b, d = rng.uniform(0, 360), rng.uniform(0.2, 0.7) * RADIUS_V
            go(plan.victim[0] + d * _bearing_vec(b)[0], plan.victim[1] + d * _bearing_vec(b)[1])
            stay(rng.uniform(120, 480))
        else:  # just beyond the victim's radius
            b, d = rng.uniform(0, 360), rng.uniform(1.4, 2.5) * RADIUS_V
            go(plan.victim[0] + d * _bearing_vec(b)[0], plan.victim[1] + d * _bearing_vec(b)[1])
            stay(rng.uniform(300, 900))
    for _ in range(int(rng.poisson(HOURS))):  # background multipath, any direction
        s = rng.uniform(0, end)
        episode(s, s + 180, rng.uniform(0, 360))


def _gaps(plan: Plan, rng: np.random.Generator) -> None:
    gaps: list[tuple[float, float, int]] = []

    def free(a: float, b: float) -> bool:
        return all(b + 300 < g0 or a > g1 + 300 for g0, g1, _ in gaps)

    dark = [v for v in plan.planned_visits if 120 <= v[2] - v[1] <= 720]
    if dark and rng.random() < 0.7:
        _name, enter, leave = dark[int(rng.integers(len(dark)))]
        if rng.random() < 0.5:  # the whole visit dark
            a = enter - rng.uniform(30, 90)
        else:  # dark from just after its first fix inside
            a = enter + plan.interval * rng.uniform(0.3, 1.0) + 15
        b = max(leave + rng.uniform(30, 120), a + 300)
        if b - a <= 1200:
            gaps.append((a, b, int(rng.integers(1, 3))))
    for _ in range(int(rng.integers(1, 3))):
        a = rng.uniform(600, HOURS * 3600 - 1500)
        b = a + rng.uniform(300, 1200)
        if free(a, b):
            gaps.append((a, b, int(rng.integers(1, 3))))
    plan.gaps = sorted(gaps)


def cases(plans: list[Plan]) -> ZoneSet:
    docs = []
    for p in plans:
        features = []
        for name, x, y, r in p.zones:
            lon, lat = p.lonlat(x, y)
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
                    "properties": {"zone": name, "kind": "exclusion", "radius_m": r},
                }
            )
        victim = {"id": "V", "phone": "+447700900123", "device": p.device}
        victim["mobile_radius_m"] = RADIUS_V
        meta = {"id": p.case, "tags": [p.tag], "timezone": "Europe/London", "victims": [victim]}
        docs.append({"type": "FeatureCollection", "case": meta, "features": features})
    return ZoneSet([parse_case(d, f"{d['case']['id']}.geojson") for d in docs])


# -- devices ------------------------------------------------------------------------------


class TagDevice:
    """Fixes of one tag with the error model, taken when due; obeys `rate` when asked."""

    def __init__(self, plan: Plan, rng: np.random.Generator, obey: bool) -> None:
        self.plan, self.rng, self.obey = plan, rng, obey
        self.interval = plan.interval
        self.next_at = float(rng.uniform(0, plan.interval))
        self.last_t: float | None = None
        self.err = rng.normal(0, plan.sigma, 2)
        self.seq = 0
        self.buffer: list[dict] = []
        self.upload_in = 0  # live fixes until the buffer goes
        self.taken: list[tuple[float, float, float, bool]] = []  # t, x, y (sent), buffered
        self.uploaded = -math.inf  # buffered fixes taken up to this time have been sent

    def _gap(self, t: float) -> tuple[float, float, int] | None:
        return next((g for g in self.plan.gaps if g[0] <= t < g[1]), None)

    def fix(self) -> list[bytes]:
        """Take the fix due now; returns the payloads sent at this moment."""
        p, rng, t = self.plan, self.rng, self.next_at
        if self.last_t is not None:
            phi = math.exp(-(t - self.last_t) / p.tau)
            self.err = phi * self.err + p.sigma * math.sqrt(1 - phi * phi) * rng.normal(0, 1, 2)
        self.last_t = t
        self.next_at = t + self.interval
        tx, ty = p.at(t)
        obj: dict = {"ts": round(T0 + t, 3), "seq": self.seq}
        self.seq += 1
        if rng.random() < 0.03:  # honest bad fix: lbs or indoor, large acc
            acc = float(rng.uniform(50, 300))
            ex, ey = rng.normal(0, acc / 1.515, 2)
            if rng.random() < 0.5:
                obj["fix"] = "lbs"
        else:
            ex, ey = self.err
            acc = float(np.clip(p.sigma * 1.515 * rng.uniform(0.8, 1.25), 4, 30))
            for m0, m1, bx, by in p.multipath:
                if m0 <= t < m1:
                    ex, ey, acc = ex + bx, ey + by, float(rng.uniform(10, 30))
                    break
        x, y = float(tx) + ex, float(ty) + ey
        lon, lat = p.lonlat(x, y)
        obj.update(lat=round(float(lat), 7), lon=round(float(lon), 7), acc=round(acc, 1))
        gap = self._gap(t)
        self.taken.append((t, x, y, gap is not None))
        if gap is not None:
            if not self.buffer:
                self.upload_in = gap[2]
            self.buffer.append(obj)
            return []
        out = [orjson.dumps(obj)]
        if self.buffer:
            self.upload_in -= 1
            if self.upload_in <= 0:
                order = rng.permutation(len(self.buffer))
                out.append(orjson.dumps([self.buffer[k] for k in order]))
                self.buffer = []
                self.uploaded = t
        return out

    def command(self, payload: bytes, now: float) -> None:
        """As simulators/device.py: a new interval counts from the latest fix, not before now."""
        cmd = orjson.loads(payload)
        if self.obey and cmd.get("cmd") == "rate":
            new = float(cmd["interval_s"])
            if new != self.interval:
                last = self.next_at - self.interval
                self.interval = new
                self.next_at = max(now, last + new)


class VictimPhone:
    def __init__(self, plan: Plan, rng: np.random.Generator) -> None:
        self.plan, self.rng = plan, rng
        self.next_at = float(rng.uniform(0, VICTIM_EVERY_S))
        self.err = rng.normal(0, 5.0, 2)

    def fix(self) -> bytes:
        rng, t = self.rng, self.next_at
        self.next_at += VICTIM_EVERY_S
        phi = math.exp(-VICTIM_EVERY_S / 60.0)
        self.err = phi * self.err + 5.0 * math.sqrt(1 - phi * phi) * rng.normal(0, 1, 2)
        obj: dict = {"ts": round(T0 + t, 3)}
        u = rng.random()
        if u < 0.15:  # the phone indoors: a cell fix of hundreds of metres, or a poor GNSS one
            acc = float(rng.uniform(150, 400) if u < 0.1 else rng.uniform(50, 150))
            ex, ey = rng.normal(0, acc / 1.515, 2)
            if u < 0.1:
                obj["fix"] = "lbs"
        else:
            (ex, ey), acc = self.err, float(rng.uniform(6, 12))
        lon, lat = self.plan.lonlat(self.plan.victim[0] + ex, self.plan.victim[1] + ey)
        obj.update(lat=round(float(lat), 7), lon=round(float(lon), 7), acc=round(acc, 1))
        return orjson.dumps(obj)


# -- running --------------------------------------------------------------------------------


def _events(plans, rng, obey: bool, tags_only=None):
    devices = []
    for p in plans:
        if tags_only is not None and p.interval not in tags_only:
            continue
        devices.append(("tag", p, TagDevice(p, np.random.default_rng(rng.integers(2**32)), obey)))
        devices.append(("victim", p, VictimPhone(p, np.random.default_rng(rng.integers(2**32)))))
    heap = [(d[2].next_at, k) for k, d in enumerate(devices)]
    heapq.heapify(heap)
    return devices, heap


def replay(
    plans: list[Plan], zoneset: ZoneSet, seed: int, obey: bool, intervals=None, hours=HOURS
):
    """Every device's messages through the pipeline in event time; returns (records,
    accepted fixes, victim fixes, tag devices by tag)."""
    rng = np.random.default_rng(seed)
    pipe = Pipeline(zoneset, Rules(), TOPICS, event_clock=True)
    devices, heap = _events(plans, rng, obey, intervals)
    by_tag = {p.tag: d for kind, p, d in devices if kind == "tag"}
    index = {p.tag: k for k, (kind, p, _d) in enumerate(devices) if kind == "tag"}
    end = hours * 3600
    records, accepted, victim_fixes, pending = [], [], [], []

    def flush(now: float) -> set[str]:
        result = pipe.process(pending)
        records.extend(result.records)
        accepted.extend(result.accepted)
        moved = set()
        for tag, payload in result.commands:
            before = by_tag[tag].next_at
            by_tag[tag].command(payload, now)
            if by_tag[tag].next_at != before:
                moved.add(tag)
        pending.clear()
        return moved

    while heap:
        at, k = heapq.heappop(heap)
        kind, plan, dev = devices[k]
        if at >= end or at != dev.next_at:
            continue  # the end, or an entry a rate command moved (pushed again below)
        received = T0 + at
        if kind == "tag":
            for payload in dev.fix():
                pending.append(Inbound(TOPICS.tag_fix(plan.tag), payload, received))
        else:
            payload = dev.fix()
            victim_fixes.append((plan.tag, orjson.loads(payload)))
            pending.append(Inbound(TOPICS.victim_fix(plan.device), payload, received))
        if obey or len(pending) >= 500:
            for tag in flush(at) - {plan.tag if kind == "tag" else ""}:
                heapq.heappush(heap, (by_tag[tag].next_at, index[tag]))
        heapq.heappush(heap, (dev.next_at, k))
    if pending:
        flush(end)
    return records, accepted, victim_fixes, by_tag


# -- truth ------------------------------------------------------------------------------------


@dataclass
class Truth:
    visits: list[tuple[str, str, float, float, bool, float]]  # tag, zone, t0, t1, dark, interval
    zone_dist: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (tag, zone) -> t, d
    victim_dist: dict[str, tuple[np.ndarray, np.ndarray]]


def truth(plans: list[Plan], zoneset: ZoneSet) -> Truth:
    t = np.arange(0.0, HOURS * 3600, TRUTH_STEP_S)
    visits, zone_dist, victim_dist = [], {}, {}
    for p in plans:
        x, y = p.at(t)
        lon, lat = p.lonlat(x, y)
        idx = np.full(len(t), zoneset.tag_index(p.tag))
        ev = zoneset.evaluate(idx, lon, lat)
        for z in set(ev.zone.tolist()):
            name = zoneset.zones[z].zone_id
            d = np.full(len(t), np.inf)
            d[ev.fix[ev.zone == z]] = ev.distance_m[ev.zone == z]
            zone_dist[(p.tag, name)] = (t, d)
            for t0, t1 in _runs(t, d <= 0):
                if t1 - t0 >= VISIT_MIN_S:
                    dark = _dark_share(p.gaps, t0, t1) >= 0.5
                    visits.append((p.tag, name, t0, t1, dark, p.interval))
        victim_dist[p.tag] = (t, np.hypot(x - p.victim[0], y - p.victim[1]))
    return Truth(visits, zone_dist, victim_dist)


def _runs(t: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    out, start = [], None
    for k, m in enumerate(mask.tolist()):
        if m and start is None:
            start = t[k]
        elif not m and start is not None:
            out.append((float(start), float(t[k - 1])))
            start = None
    if start is not None:
        out.append((float(start), float(t[-1])))
    return out


def _dark_share(gaps, t0: float, t1: float) -> float:
    covered = sum(max(0.0, min(t1, g1) - max(t0, g0)) for g0, g1, _ in gaps)
    return covered / max(t1 - t0, 1e-9)


def _min_between(series: tuple[np.ndarray, np.ndarray], t0: float, t1: float) -> float:
    t, d = series
    sel = (t >= t0 - TRUTH_STEP_S) & (t <= t1 + TRUTH_STEP_S)
    return float(d[sel].min()) if sel.any() else math.inf


# -- episodes of each rule ------------------------------------------------------------------


@dataclass
class Episode:
    tag: str
    zone: str | None  # None: proximity
    opened: float
    critical: float | None
    closed: float | None


def engine_episodes(records) -> tuple[list[Episode], list[Episode], list[tuple[str, str, float]]]:
    eps: dict[str, Episode] = {}
    prox: dict[str, Episode] = {}
    late = []
    for r in records:
        ts = parse_rfc3339(r.ts) - T0
        if r.type == "zone.late_breach":
            late.append((r.tag, r.zone, ts))
            continue
        if r.type not in ("zone.breach", "proximity"):
            continue
        table = eps if r.type == "zone.breach" else prox
        ep = table.setdefault(r.id, Episode(r.tag, r.zone, ts, None, None))
        if r.severity == "critical" and ep.critical is None:
            ep.critical = ts
        if r.state == "resolved":
            ep.closed = ts
    return list(eps.values()), list(prox.values()), late


def naive_episodes(plans, zoneset: ZoneSet, accepted, victim_fixes, need: int):
    """Breach episodes of the rule `need` consecutive fixes inside (1: literal), its late
    breaches, and (literal) proximity episodes, from the fixes the pipeline accepted."""
    fixes = [f for f, _late in accepted if f.lat is not None]
    lates = [late for f, late in accepted if f.lat is not None]
    idx = zoneset.tag_indices(f.tag for f in fixes)
    ev = zoneset.evaluate(idx, [f.lon for f in fixes], [f.lat for f in fixes])
    rows = defaultdict(list)
    for i, z, d in zip(ev.fix.tolist(), ev.zone.tolist(), ev.distance_m.tolist(), strict=True):
        rows[i].append((zoneset.zones[z].zone_id, d))
    state: dict = {}
    eps, late, late_open = [], [], set()
    for i, f in enumerate(fixes):
        t = f.ts - T0
        for name, d in rows[i]:
            key = (f.tag, name)
            if lates[i]:
                if d <= 0 and key not in late_open:
                    late.append((f.tag, name, t))
                    late_open.add(key)
                elif d > 0:
                    late_open.discard(key)
                continue
            late_open.discard(key)
            ep, run, out = state.get(key, (None, 0, 0))
            if d <= 0:
                run, out = run + 1, 0
                if ep is None:
                    ep = Episode(f.tag, name, t, None, None)
                    eps.append(ep)
                if ep.critical is None and run >= need:
                    ep.critical = t
            elif d > max(EXIT_MARGIN_M, f.acc):
                run, out = 0, out + 1
                if ep is not None and out >= 2:
                    ep.closed, ep = t, None
            else:
                run = 0 if need > 1 else run
                out = 0
            state[key] = (ep, run, out)
    return eps, late, _literal_proximity(plans, fixes, lates, victim_fixes)


def _literal_proximity(plans, fixes, lates, victim_fixes) -> list[Episode]:
    """Any tag fix and fresh victim fix within the radius: critical at once."""
    open_: dict = {}
    eps = []
    for ts, tag, _tag_fix, _good, d in _live_pairs(fixes, lates, victim_fixes):
        ep, out = open_.get(tag, (None, 0))
        if d <= RADIUS_V:
            if ep is None:
                ep = Episode(tag, None, ts - T0, ts - T0, None)
                eps.append(ep)
            out = 0
        elif ep is not None and d > RADIUS_V + EXIT_MARGIN_M:
            out += 1
            if out >= 2:
                ep.closed, ep, out = ts - T0, None, 0
        open_[tag] = (ep, out)
    return eps


def _live_pairs(fixes, lates, victim_fixes):
    """The pairs the literal rule judges, in event time: each live tag or victim fix with the
    other side's latest fix within 180 s. Yields (ts, tag, the tag fix's ts, both good, d):
    good is neither coarse (`lbs`) nor of acc > 100 m, on both sides."""
    events = [
        (f.ts, 0, f.tag, (f.lon, f.lat), _good(f.fix, f.acc))
        for f, late in zip(fixes, lates, strict=True)
        if not late
    ]
    events += [
        (v["ts"], 1, tag, (v["lon"], v["lat"]), _good(v.get("fix", "gnss"), v["acc"]))
        for tag, v in victim_fixes
    ]
    events.sort(key=lambda e: e[0])
    last: dict = {}
    for ts, kind, tag, pos, good in events:
        last[(tag, kind)] = (ts, pos, good)
        other = last.get((tag, 1 - kind))
        if other is None or abs(other[0] - ts) > 180:
            continue
        tag_ts = ts if kind == 0 else other[0]
        yield ts, tag, tag_ts, good and other[2], _metres(pos, other[1])


def _good(kind: str, acc: float) -> bool:
    return kind != "lbs" and acc <= GOOD_ACC_M


def _prox_seen(accepted, victim_fixes) -> dict[str, list[tuple[float, float]]]:
    """Per tag, the live pairs of good fixes within the victim's radius, as (the tag fix's
    time, the pair's time) from the start: what shows a true proximity live."""
    fixes = [f for f, _late in accepted if f.lat is not None]
    lates = [late for f, late in accepted if f.lat is not None]
    out: dict = defaultdict(list)
    for ts, tag, tag_ts, good, d in _live_pairs(fixes, lates, victim_fixes):
        if good and d <= RADIUS_V:
            out[tag].append((tag_ts - T0, ts - T0))
    return out


def _metres(a, b) -> float:
    phi = math.radians((a[1] + b[1]) / 2)
    return math.hypot((a[0] - b[0]) * 111412.84 * math.cos(phi), (a[1] - b[1]) * 111132.954)


# -- figures -----------------------------------------------------------------------------------


def figures(
    tr: Truth, plans, breaches, late, prox, uploads, seen, prox_seen, until=HOURS * 3600
) -> dict:
    """`seen`: the visits (tag, zone, t0) some live fix shows inside (_seen_live): a visit
    no live fix shows inside cannot be alerted live by any rule; it counts apart.
    `prox_seen`: per tag, the live good pairs within the radius (_prox_seen); a true
    proximity none of them shows counts apart the same way."""
    interval = {p.tag: p.interval for p in plans}
    gaps = {p.tag: p.gaps for p in plans}
    by_key = defaultdict(list)
    for ep in breaches:
        by_key[(ep.tag, ep.zone)].append(ep)
    missed, unseen, shallow, silent, times = 0, 0, 0, 0, defaultdict(list)
    flaps = 0
    dark_total = dark_ok = 0
    seen_dark = {
        (tag, t0): _dark_share(gaps[tag], t0, t1) > 0
        for tag, _z, t0, t1, _d, _e in tr.visits
        if tag in gaps
    }
    for tag, zone, t0, t1, dark, every in tr.visits:
        if tag not in interval or t1 > until - every:
            continue  # a tag left out of this run, or a visit after its end
        eps = by_key[(tag, zone)]
        for ep in eps:  # an episode ended during the visit: a flap
            if ep.closed is not None and t0 < ep.closed < t1 - TRUTH_STEP_S:
                flaps += 1
        hits = [
            ep.critical
            for ep in eps
            if ep.critical is not None
            and ep.critical <= t1 + every
            and (ep.closed is None or ep.closed >= t0)
        ]
        if dark:  # its late breach, unless a confirmed breach covers it already
            if (tag, zone, t0, t1) in uploads:
                dark_total += 1
                # one late breach a run of late fixes inside: a run may start at a fix
                # that error put inside before the true entry, in the same gap
                start = min([g0 for g0, g1, _u in gaps[tag] if g0 < t1 and g1 > t0] + [t0])
                if hits or any(
                    lt == tag and lz == zone and start - every <= ts <= t1 + every
                    for lt, lz, ts in late
                ):
                    dark_ok += 1
            continue
        if t1 - t0 < MUST_ALERT_S:
            continue
        if not hits:
            if (tag, zone, t0) in seen:
                missed += 1
                shallow += seen[(tag, zone, t0)] <= 1.0
                silent += not any(
                    ep.opened <= t1 + every and (ep.closed is None or ep.closed >= t0)
                    for ep in eps
                )
            else:
                unseen += 1
        elif not seen_dark.get((tag, t0)):  # time to alert only from an entry seen live
            times[every].append(max(0.0, min(hits) - t0))
    false = 0
    for ep in breaches:
        if ep.critical is None:
            continue
        if _min_between(tr.zone_dist[(ep.tag, ep.zone)], ep.opened - 30, ep.critical) > (
            FALSE_MARGIN_M
        ):
            false += 1
    prox_false = sum(
        1
        for ep in prox
        if ep.critical is not None
        and _min_between(tr.victim_dist[ep.tag], ep.critical - 30, ep.critical)
        > RADIUS_V + FALSE_MARGIN_M
    )
    prox_missed = prox_unseen = prox_total = 0
    for p in plans:
        t, d = tr.victim_dist[p.tag]
        for t0, t1 in _runs(t, d <= RADIUS_V):
            if t1 - t0 < VISIT_MIN_S or _dark_share(p.gaps, t0, t1) >= 0.5 or t1 > until - 180:
                continue  # too short, or the tag was dark (no live fix can show it)
            prox_total += 1
            if not any(
                ep.tag == p.tag
                and ep.critical is not None
                and ep.critical <= t1 + interval[p.tag]
                and (ep.closed is None or ep.closed >= t0)
                for ep in prox
            ):
                if _shown(prox_seen.get(p.tag, ()), t0, t1, interval[p.tag]):
                    prox_missed += 1
                else:
                    prox_unseen += 1
    out: dict = {
        "missed_visits": missed,
        "missed_visits_unseen": unseen,
        "missed_visits_shallow": shallow,
        "missed_visits_silent": silent,
        "false_critical_breaches": false,
        "flaps": flaps,
        "proximity_false": prox_false,
        "proximity_missed": prox_missed,
        "proximity_missed_unseen": prox_unseen,
        "proximity_true": prox_total,
        "dark_visits": dark_total,
        "dark_visits_late_breach": dark_ok,
    }
    _add_times(out, times)
    out[TIMES] = {every: list(times[every]) for every in INTERVALS}  # pooled over seeds, then cut
    return out


def _shown(pairs, t0: float, t1: float, every: float) -> bool:
    """A pair whose tag fix was taken during the proximity, judged by the next tag fix: the
    literal rule is critical by then (a figure's window ends at t1 + the interval)."""
    return any(t0 <= tag_t <= t1 and at <= t1 + every for tag_t, at in pairs)


TIMES = "_times"  # the raw times to alert by interval: pooled over seeds, never printed
COUNTS = (
    "missed_visits",
    "missed_visits_unseen",
    "missed_visits_shallow",
    "missed_visits_silent",
    "false_critical_breaches",
    "flaps",
    "proximity_false",
    "proximity_missed",
    "proximity_missed_unseen",
    "proximity_true",
    "dark_visits",
    "dark_visits_late_breach",
)


def _add_times(out: dict, times: dict) -> None:
    """Median and p95 of the times to alert, over all intervals and by interval."""
    every_time = [x for every in INTERVALS for x in times.get(every, [])]
    out["time_to_alert_median_s"] = _pct(every_time, 50)
    out["time_to_alert_p95_s"] = _pct(every_time, 95)
    for every in INTERVALS:
        out[f"time_to_alert_p95_s_{every:.0f}"] = _pct(times.get(every, []), 95)
        out[f"time_to_alert_median_s_{every:.0f}"] = _pct(times.get(every, []), 50)


def _pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _uploads(tr: Truth, devices, zoneset: ZoneSet, plans) -> set:
    """Dark visits whose buffered fixes show the tag inside the zone (the upload proves it),
    if the upload came before the run ended (a gap at its end is never uploaded)."""
    out = set()
    plan_of = {p.tag: p for p in plans}
    for tag, zone, t0, t1, dark, _every in tr.visits:
        if not dark:
            continue
        p = plan_of[tag]
        _n, cx, cy, r = next(z for z in p.zones if z[0] == zone)
        sent = min(t1, devices[tag].uploaded)
        if any(
            buffered and t0 <= t <= sent and math.hypot(x - cx, y - cy) <= r
            for t, x, y, buffered in devices[tag].taken
        ):
            out.add((tag, zone, t0, t1))
    return out


def _seen_live(tr: Truth, zoneset: ZoneSet, accepted) -> dict:
    """The visits (tag, zone, t0) that at least one live fix taken during them shows
    inside their zone, each with the deepest such fix's depth in sigmas of its error."""
    fixes = [f for f, late in accepted if f.lat is not None and not late]
    ev = zoneset.evaluate(
        zoneset.tag_indices(f.tag for f in fixes), [f.lon for f in fixes], [f.lat for f in fixes]
    )
    inside = defaultdict(list)
    for i, z, d in zip(ev.fix.tolist(), ev.zone.tolist(), ev.distance_m.tolist(), strict=True):
        if d <= 0:
            fix = fixes[i]
            sigmas = -d * SIGMA_PER_ACC / fix.acc
            inside[(fix.tag, zoneset.zones[z].zone_id)].append((fix.ts - T0, sigmas))
    seen = {}
    for tag, zone, t0, t1, _dark, _every in tr.visits:
        depths = [sigmas for t, sigmas in inside[(tag, zone)] if t0 <= t <= t1]
        if depths:
            seen[(tag, zone, t0)] = max(depths)
    return seen


def run(
    seed: int = 17, tags: int = TAGS, closed_loop: bool = True, keep_times: bool = False
) -> dict:
    progress = Progress(f"bench quality, seed {seed}")
    rng = np.random.default_rng(seed)
    plans = [_plan(rng, i) for i in range(tags)]
    zoneset = cases(plans)
    progress.step(f"{tags} tags, {len(zoneset.zones)} zones, {HOURS:g} h; truth")
    tr = truth(plans, zoneset)
    progress.step("open loop through the pipeline")
    records, accepted, victim_fixes, devices = replay(plans, zoneset, seed + 1, obey=False)
    uploads = _uploads(tr, devices, zoneset, plans)
    seen = _seen_live(tr, zoneset, accepted)
    prox_seen = _prox_seen(accepted, victim_fixes)
    breaches, prox, late = engine_episodes(records)
    result = {
        "benchmark": "quality",
        "seed": seed,
        "tags": tags,
        "zones": len(zoneset.zones),
        "fixes": len(accepted),
        "late_fixes": sum(1 for _f, late_ in accepted if late_),
        "visits": sum(1 for v in tr.visits if not v[4] and v[3] - v[2] >= MUST_ALERT_S),
        "tagwatch": figures(tr, plans, breaches, late, prox, uploads, seen, prox_seen),
    }
    progress.step("literal and two-fix rules on the same fixes")
    for name, need in (("literal", 1), ("two_fix", 2)):
        eps, late_n, prox_n = naive_episodes(plans, zoneset, accepted, victim_fixes, need)
        result[name] = figures(tr, plans, eps, late_n, prox_n, uploads, seen, prox_seen)
    if closed_loop:
        progress.step(f"closed loop: 30 s and 60 s tags obeying rate, first {LOOP_HOURS:g} h")
        hours = LOOP_HOURS
        records, accepted, victims, _ = replay(plans, zoneset, seed + 1, True, (30.0, 60.0), hours)
        breaches, prox, late = engine_episodes(records)
        loop = [p for p in plans if p.interval in (30.0, 60.0)]
        seen = _seen_live(tr, zoneset, accepted)
        prox_seen = _prox_seen(accepted, victims)
        fig = figures(tr, loop, breaches, late, prox, uploads, seen, prox_seen, hours * 3600)
        result["closed_loop"] = {k: fig[k] for k in LOOP_KEYS}
    progress.done()
    return result if keep_times else _without_times(result)


LOOP_KEYS = (
    "missed_visits",
    "missed_visits_unseen",
    "missed_visits_shallow",
    "missed_visits_silent",
    "false_critical_breaches",
    "time_to_alert_median_s",
    "time_to_alert_p95_s",
    "time_to_alert_p95_s_30",
    "time_to_alert_p95_s_60",
    TIMES,
)
RULES = ("tagwatch", "literal", "two_fix", "closed_loop")


def _without_times(result: dict) -> dict:
    return {k: {f: v for f, v in r.items() if f != TIMES} if k in RULES else r
            for k, r in result.items()}


def pooled(results: list[dict]) -> dict:
    """Several seeds' results (run(keep_times=True)) as one: counts summed, times to alert
    pooled before their median and p95 are taken; each seed's own figures under `seeds`."""
    out: dict = {
        "benchmark": "quality",
        "seeds": [r["seed"] for r in results],
        **{k: sum(r[k] for r in results) for k in ("zones", "fixes", "late_fixes", "visits")},
        "tags": sum(r["tags"] for r in results),
    }
    for rule in RULES:
        parts = [r[rule] for r in results if rule in r]
        if not parts:
            continue
        fig = {k: sum(p[k] for p in parts) for k in COUNTS if k in parts[0]}
        _add_times(fig, {e: [x for p in parts for x in p[TIMES][e]] for e in INTERVALS})
        out[rule] = {k: v for k, v in fig.items() if rule != "closed_loop" or k in LOOP_KEYS}
    out["per_seed"] = [_without_times(r) for r in results]
    return out


ROWS = [
    ("missed_visits", "missed visits >= 2 min (a live fix inside)"),
    ("missed_visits_shallow", "  of which inside by <= 1 sigma only"),
    ("missed_visits_silent", "  of which not even probable"),
    ("missed_visits_unseen", "missed, no live fix inside (no rule sees)"),
    ("false_critical_breaches", "false critical breaches"),
    ("flaps", "flaps (breach ended during a true visit)"),
    ("time_to_alert_median_s", "time to alert median (s)"),
    ("time_to_alert_p95_s", "time to alert p95 (s)"),
    ("time_to_alert_p95_s_30", "  p95, 30 s tags"),
    ("time_to_alert_p95_s_60", "  p95, 60 s tags"),
    ("time_to_alert_p95_s_120", "  p95, 120 s tags"),
    ("proximity_false", "proximity false"),
    ("proximity_missed", "proximity missed (a live good pair within)"),
    ("proximity_missed_unseen", "prox. missed, no live good pair (no rule)"),
    ("dark_visits_late_breach", "dark visits with a late breach"),
]


def print_text(result: dict) -> None:
    cols = ("tagwatch", "literal", "two_fix")
    seeds = result.get("seeds", [result.get("seed")])
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {_span(seeds)}, summed"
    print(
        f"{result['tags']} tags, {result['zones']} zones, {result['fixes']:,} fixes "
        f"({result['late_fixes']:,} late), {result['visits']} visits >= 2 min, "
        f"{result['tagwatch']['proximity_true']} true proximities, "
        f"{result['tagwatch']['dark_visits']} dark visits with a late upload "
        f"({which})"
    )
    print(f"{'':<42}" + "".join(f"{c:>10}" for c in cols))
    for key, label in ROWS:
        cells = "".join(f"{_cell(result[c].get(key)):>10}" for c in cols)
        print(f"{label:<42}{cells}")
    loop = result.get("closed_loop")
    if loop:
        print(
            f"closed loop (30 s and 60 s tags obeying rate, {LOOP_HOURS:g} h): time to alert p95 "
            f"{_cell(loop['time_to_alert_p95_s'])} s "
            f"(30 s tags {_cell(loop['time_to_alert_p95_s_30'])},"
            f" 60 s tags {_cell(loop['time_to_alert_p95_s_60'])}), missed {loop['missed_visits']}"
            f" ({loop['missed_visits_shallow']} shallow, {loop['missed_visits_silent']} silent),"
            f" false {loop['false_critical_breaches']}"
        )


def _cell(value) -> str:
    return "-" if value is None else f"{value:g}"


def _span(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def parse_seeds(text: str) -> list[int]:
    """`17`, `1-20` or `1,5,9`: the seeds to run (argparse type; ValueError names the text)."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"seeds {text!r}: give N, A-B or N,M,...") from None
        if hi < lo or hi - lo >= 1000:
            raise ValueError(f"seeds {text!r}: {part!r} is not a range of at most 1000 seeds")
        seeds.extend(range(lo, hi + 1))
    return seeds


def _run_kept(seed: int) -> dict:
    return run(seed, keep_times=True)


def run_seeds(seeds: list[int]) -> dict:
    """One seed as run(); several in parallel (one process a core), pooled."""
    if len(seeds) == 1:
        return run(seeds[0])
    from concurrent.futures import ProcessPoolExecutor

    from tagwatch.bench.report import _cpus

    with ProcessPoolExecutor(min(len(seeds), _cpus())) as pool:
        return pooled(list(pool.map(_run_kept, seeds)))


def main(as_json: bool, seeds: list[int]) -> int:
    import json

    from tagwatch.bench.report import machine

    result = run_seeds(seeds)
    if as_json:
        print(json.dumps({**result, "machine": machine()}, sort_keys=True))
    else:
        print_text(result)
        if len(seeds) > 1:
            _print_seeds(result["per_seed"])
    return 0


def _print_seeds(results: list[dict]) -> None:
    print("seed  missed (+unseen)  false critical (two-fix)  flaps (two-fix)  p95 s  loop 30/60 s")
    for r in results:
        mine, naive, loop = r["tagwatch"], r["two_fix"], r.get("closed_loop", {})
        print(
            f"{r['seed']:>4}  {mine['missed_visits']:>6} (+{mine['missed_visits_unseen']})"
            f"  {mine['false_critical_breaches']:>14} ({naive['false_critical_breaches']})"
            f"  {mine['flaps']:>7} ({naive['flaps']})  {_cell(mine['time_to_alert_p95_s']):>5}"
            f"  {_cell(loop.get('time_to_alert_p95_s_30'))}"
            f"/{_cell(loop.get('time_to_alert_p95_s_60'))}"
        )
