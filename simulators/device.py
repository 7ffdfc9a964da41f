"""Device models: what a tag (or a victim's device) sends about where it truly is.

A `Device` turns a ground-truth `Movement` into MQTT messages in scenario time:
a fix every `interval_s` (changed by `rate` commands), honest GPS noise with
its `acc`, overconfident urban-canyon outliers, and the faults of its script
(`Fault` windows): no fix (heartbeats), no comms (buffered, uploaded later as a
JSON array), duplicates, clock skew, battery drain, strap tamper, a spoofed jump.
Every fix carries its ground truth (`Truth`), so tests can tell an outlier the
generator made from noise.

Times here are scenario seconds since the scenario start; `t0` (Unix seconds)
turns them into fix timestamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import orjson

from simulators.movement import LonLat, Movement, distance_m, offset
from tagwatch.wire import Topics, parse_rfc3339, rfc3339

FAULT_KINDS = frozenset(
    {"no_fix", "no_comms", "duplicates", "skew", "tamper", "jump", "outliers", "battery"}
)
UPLOAD_MODES = ("before_live", "after_live", "never")
# How a device speaks: tagwatch's own fix JSON over MQTT; a victim's phone as the OwnTracks
# app (`location` JSON on `{owntracks prefix}/USER/DEVICE`); a tag through a Traccar server
# (its JSON position forwarding, POSTed to /ingest/traccar: Emission.via "traccar").
PROTOCOLS = {"tag": ("tagwatch", "traccar"), "victim": ("tagwatch", "owntracks")}
KMH, KNOT_MPS = 3.6, 1852 / 3600
MAX_BATCH = 1000


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    until: float = math.inf
    upload: str = "before_live"  # no_comms: batch before or after the first live fix, or lost
    upload_delay_s: float = 0.0  # no_comms, after_live: how long after reconnecting
    shuffle: bool = True  # no_comms: the batch array out of order
    rate: float = 1.0  # duplicates, outliers: share of fixes
    offset_s: float = 0.0  # skew: added to ts
    distance_m: float = 5000.0  # jump
    bearing_deg: float = 90.0  # jump
    pct: float | None = None  # battery: level at `at`
    drain_pct_h: float | None = None  # battery: drain from `at` on

    def active(self, t: float) -> bool:
        return self.at <= t < self.until


@dataclass(frozen=True)
class Truth:
    t: float  # scenario seconds when the fix was taken
    true_pos: LonLat | None
    sent_pos: LonLat | None
    acc: float | None
    outlier: bool = False
    jump: bool = False
    live: bool = True  # False: sent in a buffered upload

    @property
    def error_m(self) -> float:
        if self.true_pos is None or self.sent_pos is None:
            return 0.0
        return distance_m(self.true_pos, self.sent_pos)


@dataclass(frozen=True)
class Emission:
    t: float  # scenario seconds when it is sent
    topic: str
    payload: bytes
    truths: tuple[Truth, ...]
    duplicate: bool = False
    via: str = "mqtt"  # "traccar": POST `payload` to the Traccar endpoint (topic: the tag id)


@dataclass
class DeviceSpec:
    id: str
    kind: str = "tag"  # "tag" or "victim"
    interval_s: float = 60.0
    acc_m: float = 8.0
    outlier_rate: float = 0.0
    battery_pct: float | None = 90.0
    drain_pct_h: float = 0.5
    seq: bool = True
    faults: list[Fault] = field(default_factory=list)
    start_s: float = 0.0  # first fix
    protocol: str = "tagwatch"  # see PROTOCOLS
    owntracks: str | None = None  # protocol "owntracks": the phone's "USER/DEVICE"


class Device:
    def __init__(self, spec: DeviceSpec, movement: Movement, topics: Topics, t0: float,
                 rng: np.random.Generator) -> None:
        self.spec, self.movement, self.t0, self.rng = spec, movement, t0, rng
        self.topic = topics.tag_fix(spec.id) if spec.kind == "tag" else topics.victim_fix(spec.id)
        if spec.protocol == "owntracks":
            self.topic = f"{topics.owntracks or 'owntracks'}/{spec.owntracks}"
        self.interval = spec.interval_s
        self.next_at = spec.start_s
        self.seq = 0
        self.buffer: list[tuple[dict, Truth]] = []
        self.pending: list[tuple[float, bytes, tuple[Truth, ...]]] = []  # delayed uploads
        self.jumped: set[float] = set()
        self.warnings: list[str] = []
        self.battery = spec.battery_pct
        self.battery_t = 0.0
        self.drain = spec.drain_pct_h

    # -- commands from tagwatch ------------------------------------------------

    def command(self, payload: bytes, now: float | None = None) -> str:
        """Obey a `{prefix}/tags/{id}/cmd` payload; returns a short description.

        A new interval counts from the latest fix, not from `now` (default: that fix's
        time), so a live run schedules the same fixes as an in-process one however
        late the command arrives, as long as it arrives before the next fix is due."""
        try:
            cmd = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return f"ignored a command that is not JSON: {payload[:80]!r}"
        if cmd.get("cmd") == "rate" and isinstance(cmd.get("interval_s"), int | float):
            new = float(cmd["interval_s"])
            if new > 0 and new != self.interval:
                last = self.next_at - self.interval  # when the latest fix was taken
                self.interval = new
                self.next_at = max(last if now is None else now, last + new)
            return f"rate {new:g} s"
        if cmd.get("cmd") == "warn":
            self.warnings.append(str(cmd.get("text", "")))
            return f"warn {cmd.get('text', '')!r}"
        return f"ignored command {cmd!r}"

    # -- producing messages ----------------------------------------------------

    def due(self) -> float:
        """Scenario time of the next message (a fix or a delayed upload)."""
        return min([self.next_at, *(p[0] for p in self.pending)])

    def step(self) -> list[Emission]:
        """The messages at `due()`, in the order they are sent."""
        t = self.due()
        out = []
        for item in [p for p in self.pending if p[0] <= t]:
            self.pending.remove(item)
            out.append(Emission(t, self.topic, item[1], item[2]))
        if self.next_at <= t:
            out.extend(self._take_fix(t))
            self.next_at = t + self.interval
        return out if self.spec.protocol == "tagwatch" else self._speak(out)

    # -- OwnTracks and Traccar -------------------------------------------------

    def _speak(self, out: list[Emission]) -> list[Emission]:
        """The same fixes as the phone app or a Traccar server sends them: one message a
        fix (a buffered upload becomes its fixes in order); OwnTracks sends no fix-less
        message, so a no-fix heartbeat is left out there."""
        spoken = []
        for em in out:
            doc = orjson.loads(em.payload)
            for fix, truth in zip(doc if isinstance(doc, list) else [doc], em.truths,
                                  strict=True):
                if self.spec.protocol == "owntracks":
                    if "lat" in fix:
                        spoken.append(Emission(em.t, self.topic, self._owntracks(fix, truth),
                                               (truth,), em.duplicate))
                else:
                    spoken.append(Emission(em.t, self.spec.id, self._traccar(fix, truth),
                                           (truth,), em.duplicate, via="traccar"))
        return spoken

    def _motion(self, t: float) -> tuple[float, float]:
        """True speed (m/s) and course (degrees) at scenario time t, over the last second."""
        a, b = self.movement.position(max(0.0, t - 1.0)), self.movement.position(t)
        d = distance_m(a, b)
        east = (b[0] - a[0]) * math.cos(math.radians(b[1]))
        course = math.degrees(math.atan2(east, b[1] - a[1])) % 360 if d > 0 else 0.0
        return d / max(1e-9, min(1.0, t)) if t > 0 else 0.0, course

    def _owntracks(self, fix: dict, truth: Truth) -> bytes:
        speed, course = self._motion(truth.t)
        msg = {"_type": "location", "tid": self.spec.id[-2:], "lat": fix["lat"],
               "lon": fix["lon"], "acc": round(fix["acc"]), "vel": round(speed * KMH),
               "cog": round(course), "tst": int(parse_rfc3339(fix["ts"].replace("Z", "+00:00"))),
               "conn": "m", "t": "p"}
        if self.battery is not None:
            msg["batt"] = round(self.battery)
        return orjson.dumps(msg)

    def _traccar(self, fix: dict, truth: Truth) -> bytes:
        speed, course = self._motion(truth.t)
        valid = "lat" in fix
        attributes: dict = {}
        if "bat" in fix:
            attributes["batteryLevel"] = fix["bat"]
        if fix.get("strap") == "tamper":
            attributes["alarm"] = "tampering"
        position = {"fixTime": fix["ts"], "deviceTime": fix["ts"], "valid": valid,
                    "latitude": fix.get("lat", 0.0), "longitude": fix.get("lon", 0.0),
                    "accuracy": fix.get("acc", 0.0), "speed": speed / KNOT_MPS,
                    "course": course, "attributes": attributes}
        return orjson.dumps({"position": position, "device": {"uniqueId": self.spec.id}})

    def _take_fix(self, t: float) -> list[Emission]:
        fix, truth = self._fix(t)
        if self._faulted("no_comms", t):
            self.buffer.append((fix, truth))
            return []
        live = self._encode([fix])
        out: list[Emission] = []
        if self.buffer:
            out.extend(self._upload(t, live, truth))
        else:
            out.append(Emission(t, self.topic, live, (truth,)))
        dup = self._fault("duplicates", t)
        if dup is not None and self.rng.random() < dup.rate:
            out.append(Emission(t, self.topic, live, (truth,), duplicate=True))
        return out

    def _upload(self, t: float, live: bytes, truth: Truth) -> list[Emission]:
        """Reconnected with a backlog: the batch goes before or after the live fix."""
        fault = self._last_fault("no_comms", t)
        backlog, self.buffer = self.buffer, []
        live_em = Emission(t, self.topic, live, (truth,))
        if fault.upload == "never":
            return [live_em]
        if fault.shuffle:
            order = self.rng.permutation(len(backlog))
            backlog = [backlog[i] for i in order]
        batches = []
        for i in range(0, len(backlog), MAX_BATCH):
            part = backlog[i : i + MAX_BATCH]
            truths = tuple(
                Truth(b.t, b.true_pos, b.sent_pos, b.acc, b.outlier, b.jump, False)
                for _, b in part
            )
            batches.append((self._encode([f for f, _ in part], array=True), truths))
        if fault.upload == "before_live":
            return [*(Emission(t, self.topic, p, tr) for p, tr in batches), live_em]
        if fault.upload_delay_s > 0:
            self.pending.extend((t + fault.upload_delay_s, p, tr) for p, tr in batches)
            return [live_em]
        return [live_em, *(Emission(t, self.topic, p, tr) for p, tr in batches)]

    def _fix(self, t: float) -> tuple[dict, Truth]:
        spec = self.spec
        skew = self._fault("skew", t)
        ts = self.t0 + t + (skew.offset_s if skew else 0.0)
        fix: dict = {"ts": rfc3339(ts)}
        if spec.seq:
            fix["seq"] = self.seq
            self.seq += 1
        if spec.kind == "tag":
            self._battery_fields(fix, t)
        true_pos = self.movement.position(t)
        if self._faulted("no_fix", t):
            fix["fix"] = "none"
            return fix, Truth(t, true_pos, None, None)
        sent, acc, outlier, jump = self._measure(t, true_pos)
        fix.update(lat=round(sent[1], 7), lon=round(sent[0], 7), acc=round(acc, 1))
        rounded = (fix["lon"], fix["lat"])
        return fix, Truth(t, true_pos, rounded, fix["acc"], outlier, jump)

    def _measure(self, t: float, true_pos: LonLat) -> tuple[LonLat, float, bool, bool]:
        spec, rng = self.spec, self.rng
        # a jump spoofs the first fix taken at or after its `at`
        jump = next((f for f in spec.faults if f.kind == "jump" and f.at <= t
                     and f.at not in self.jumped), None)
        if jump is not None:
            self.jumped.add(jump.at)
            return offset(true_pos, jump.bearing_deg, jump.distance_m), 5.0, False, True
        acc = float(spec.acc_m * rng.uniform(0.8, 1.25))
        window = self._fault("outliers", t)
        rate = window.rate if window is not None else spec.outlier_rate
        if rate > 0 and rng.random() < rate:
            # urban canyon: a multipath fix 50-200 m off that still claims a small acc
            far = float(rng.uniform(50.0, 200.0))
            return offset(true_pos, float(rng.uniform(0, 360)), far), acc, True, False
        # honest: acc is the ~68% radius, so sigma per axis is acc / 1.515 (2-D Rayleigh)
        east, north = rng.normal(0.0, acc / 1.515, size=2)
        bearing = math.degrees(math.atan2(east, north))
        return offset(true_pos, bearing, float(math.hypot(east, north))), acc, False, False

    def _battery_fields(self, fix: dict, t: float) -> None:
        for f in self.spec.faults:
            if f.kind == "battery" and f.at <= t and f.at >= self.battery_t:
                self._drain_to(f.at)
                self.battery_t = f.at
                if f.pct is not None:
                    self.battery = f.pct
                if f.drain_pct_h is not None:
                    self.drain = f.drain_pct_h
        self._drain_to(t)
        if self.battery is not None:
            fix["bat"] = round(self.battery, 1)
        fix["strap"] = "tamper" if self._faulted("tamper", t) else "ok"

    def _drain_to(self, t: float) -> None:
        if self.battery is not None and t > self.battery_t:
            self.battery = max(0.0, self.battery - self.drain * (t - self.battery_t) / 3600)
            self.battery_t = t

    def _encode(self, fixes: list[dict], array: bool = False) -> bytes:
        if self.spec.kind == "tag":
            for f in fixes:
                f.setdefault("tag", self.spec.id)
        return orjson.dumps(fixes if array else fixes[0])

    def _fault(self, kind: str, t: float) -> Fault | None:
        return next((f for f in self.spec.faults if f.kind == kind and f.active(t)), None)

    def _faulted(self, kind: str, t: float) -> bool:
        return self._fault(kind, t) is not None

    def _last_fault(self, kind: str, t: float) -> Fault:
        ended = [f for f in self.spec.faults if f.kind == kind and f.at <= t]
        return max(ended, key=lambda f: f.at)
