"""The rule engine: per-tag state machines driven by fixes in arrival order.

Pure and deterministic: no I/O, no asyncio, no wall clock. Its meaning is
defined one fix at a time, in arrival order; the pipeline batches the geometry
in front of it but never changes what it decides, so the live daemon and
`tagwatch replay` agree whatever their batch boundaries.

Per tag fix: watchdog bookkeeping, tag rules (tamper, battery, jump), then the
zone rules for every zone of the tag's cases, then the victim-device rules,
then the report-rate decision. Far from everything, a fix only updates the
bookkeeping: the zone rules see a zone only when the fix is within the rules'
horizon of it or a track for it is still open.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from tagwatch.config import Rules, rules_with
from tagwatch.engine import (
    evidence,
    following,
    patterns,
    protection,
    recent,
    seqs,
    tag_rules,
    victim_rules,
    watchdog,
    zone_rules,
)
from tagwatch.engine.context import FixView, VictimInfo, ZoneInfo
from tagwatch.engine.emit import Emitter
from tagwatch.engine.protection import Protected, Protection
from tagwatch.engine.state import (
    DeviceState,
    Motion,
    TagState,
    VictimTrack,
    ZoneTrack,
    dump,
    load_device,
    load_tag,
)
from tagwatch.engine.tag_rules import chord
from tagwatch.wire import Fix, rate_command, warn_command
from zones import Zone, ZoneSet, ecef

DUPLICATE, LATE, LIVE = "duplicate", "late", "live"
RECENT = 16  # fixes remembered per tag for duplicate detection (seq, and time+position)
RATE_S = {"fast": 5, "near": 15, "far": 60}  # report interval asked of the tag
WARN_TEXT = "You are near a restricted area. Leave now."
# A fix dated this little after its arrival is clock skew (a device's GPS time against
# the receiver's, rounding), not the future: it moves the ordering watermark as usual.
CLOCK_SKEW_S = 2.0
MOTION_M = 1000.0  # the motion model (evidence of breaches) runs this near a zone


class Engine:
    def __init__(self, zoneset: ZoneSet, rules: Rules) -> None:
        self.tags: dict[str, TagState] = {}
        self.devices: dict[str, DeviceState] = {}
        self.protection: dict[str, Protection] = {}  # per victim, "case/victim"
        self.watch = watchdog.Watchdogs()
        self.clock = -math.inf
        self.dirty: set[str] = set()
        self.rules = rules
        self.configure(zoneset)

    # -- configuration -------------------------------------------------------

    def configure(self, zoneset: ZoneSet) -> None:
        """Take a (new) set of cases; rule state for zones that remain is kept."""
        self.zoneset = zoneset
        case_rules = {
            c.id: rules_with(self.rules, c.rules, f"{c.source}: case.rules") for c in zoneset.cases
        }
        self.zone_info = ZoneInfos(zoneset, case_rules)
        self.zone_exclusion = zoneset.zone_exclusion.tolist()  # the rules' first question
        tag_cases: dict[str, list[tuple[str, Rules]]] = {}
        tag_victims: dict[str, list[VictimInfo]] = {}
        device_victims: dict[str, list[tuple[str, VictimInfo]]] = {}
        protected: dict[str, Protected] = {}
        for case in zoneset.cases:
            rules = case_rules[case.id]
            for v in case.victims:
                key = f"{case.id}/{v.id}"
                protected[key] = Protected(key, case.id, v.id, case.tags, v.phone_device, rules)
            victims = [
                VictimInfo(
                    f"{case.id}/{v.id}",
                    case.id,
                    v.id,
                    v.phone_device,
                    v.mobile_radius_m or rules.mobile_radius_m,
                    rules,
                )
                for v in case.victims
                if v.phone_device
            ]
            for tag in case.tags:
                tag_cases.setdefault(tag, []).append((case.id, rules))
                tag_victims.setdefault(tag, []).extend(victims)
                for v in victims:
                    device_victims.setdefault(v.device, []).append((tag, v))
        # Tuples, and no entry for a tag without victim devices: one caseload can
        # hold 100,000 tags, and these tables are built once per (re)load.
        self.tag_cases = {tag: tuple(cases) for tag, cases in tag_cases.items()}
        self.tag_victims = {tag: tuple(vs) for tag, vs in tag_victims.items() if vs}
        self.device_victims = {d: tuple(tags) for d, tags in device_victims.items()}
        self.protected = protected
        tag_protected: dict[str, list[Protected]] = {}
        device_protected: dict[str, list[Protected]] = {}
        for pv in protected.values():
            for tag in pv.tags:
                tag_protected.setdefault(tag, []).append(pv)
            if pv.device is not None:
                device_protected.setdefault(pv.device, []).append(pv)
        self.tag_protected = {tag: tuple(pvs) for tag, pvs in tag_protected.items()}
        self.device_protected = {d: tuple(pvs) for d, pvs in device_protected.items()}
        self.tag_rules = {tag: cases[0][1] for tag, cases in self.tag_cases.items()}
        all_rules = [*case_rules.values(), self.rules]
        max_warn = max([self.zone_info.warn_m(z) for z in zoneset.zones] + [0.0])
        self.quiet_m = max(
            max(
                r.approach_max_m + r.exit_margin_m,
                r.loiter_m + r.exit_margin_m,
                r.near_m + r.exit_margin_m,
                max_warn + r.exit_margin_m,
                r.follow_m + r.exit_margin_m,
            )
            for r in all_rules
        )

    @property
    def horizon_m(self) -> float:
        """Distances the rules need exactly; the geometry core may bound the rest."""
        return self.quiet_m

    def knows_tag(self, tag: str) -> bool:
        return tag in self.tag_cases

    def knows_device(self, device: str) -> bool:
        return device in self.device_victims

    # -- ordering and duplicates ---------------------------------------------

    def classify(self, fix: Fix, received: float | None = None) -> str:
        """Duplicate, late (older than the tag's latest) or live; remembers the fix.

        `received` is the receiving clock (None: unknown). A fix dated ahead of it by more
        than CLOCK_SKEW_S is live but moves no watermark (DESIGN 3.2 Order): lateness is
        judged against the latest fix that was not in the future when it arrived, so one
        suspicious timestamp cannot turn the correct fixes after it into late ones."""
        tag, ts, seq = fix.tag, fix.ts, fix.seq
        st = self.tags.get(tag)
        if st is None:
            st = self.tags[tag] = TagState()
        last, ahead = st.last_ts, st.ahead_ts
        ranges = st.seqs
        # The common case, without searching the recent fixes: every remembered fix is
        # no newer than last_ts or ahead_ts, and every seq seen is at most the top of the
        # highest range (ranges are only dropped from the bottom), so a fix strictly newer
        # with a seq above all of them cannot be a duplicate.
        fresh = (
            last is not None
            and ts > last
            and (ahead is None or ts > ahead)
            and (seq is None or not ranges or seq > ranges[-1][1])
        )
        item = recent.fix_item(ts, fix.lat, fix.lon, seq)
        if not fresh and (
            recent.holds_position(st.last_fixes, item)
            or (seq is not None and self._seen_seq(st, fix))
        ):
            return DUPLICATE
        st.last_fixes = recent.keep_last(st.last_fixes, item, RECENT)
        if seq is not None:
            seqs.add(ranges, seq)
        self.dirty.add(tag)
        if last is not None and ts < last:
            return LATE
        if received is not None and ts > received + CLOCK_SKEW_S:
            if ahead is None or ts > ahead:
                st.ahead_ts = ts
        else:
            st.last_ts = ts
        return LIVE

    @staticmethod
    def _seen_seq(st: TagState, fix: Fix) -> bool:
        """A recent seq is a duplicate (DESIGN 4). An older seen seq is one only when the
        fix is not newer than the latest: a re-uploaded buffer is recognised however
        long, but a device that reboots and counts from 0 again is never silenced."""
        if recent.holds_seq(st.last_fixes, fix.seq):
            return True
        newest = st.last_ts is None or fix.ts > st.last_ts
        return not newest and seqs.seen(st.seqs, fix.seq)

    def seen_payload(self, tag: str, digest: bytes) -> bool:
        """A whole message seen before (a broker redelivery after a crash)."""
        st = self.tags.get(tag)
        if st is None:
            st = self.tags[tag] = TagState()
        if recent.holds(st.upload_digests, digest, len(digest)):
            return True
        st.upload_digests = recent.keep_last(st.upload_digests, digest, 16)
        return False

    # -- the watchdog clock ---------------------------------------------------

    def advance(self, now: float, em: Emitter) -> None:
        """Move the watchdog clock to `now`, firing every deadline before it in order."""
        if now <= self.clock:
            return
        self.clock = now
        heap = self.watch.heap
        if not heap or heap[0][0] >= now:
            return  # nothing due (the usual case: inlined, as it is checked per fix)
        for _due, tag, kind in self.watch.due(now):
            st, cases = self.tags.get(tag), self.tag_cases.get(tag)
            if st is None or not cases:
                continue
            fire_at = watchdog.should_fire(st, kind, cases[0][1], now)
            if fire_at is not None:
                watchdog.fire(st, tag, kind, fire_at, cases, em)
                self.dirty.add(tag)
                self._protect(self.tag_protected.get(tag, ()), fire_at, em)
            elif kind == watchdog.NO_COMMS and st.no_comms is None:
                self._arm(tag, st, kind)

    # -- protection status (engine/protection.py) --------------------------------

    def _protect(self, victims: tuple[Protected, ...], ts: float, em: Emitter) -> None:
        """Assess these victims' protection; records (at event time `ts`) on a change."""
        for pv in victims:
            state = self.protection.get(pv.key)
            if state is None:
                state = self.protection[pv.key] = Protection()
            status, reasons, near = protection.assess(pv, self.tags, self.devices)
            if protection.update(state, pv, status, reasons, near, ts, em):
                self.dirty.add(f"victim:{pv.key}")

    def _device_turned(self, tag: str, ts: float) -> bool:
        """Whether a tag fix at `ts` would turn a victim device of its cases stale (or a
        stale one fresh) in the eyes of protection: the quiet path's question."""
        for pv in self.tag_protected.get(tag, ()):
            if pv.device is None:
                continue
            state = self.protection.get(pv.key)
            if state is None:
                return True
            device = self.devices.get(pv.device)
            stale = device is None or ts - device.ts > pv.rules.victim_fresh_s
            if stale != ("device_stale" in state.reasons):
                return True
        return False

    def protection_of(self, key: str) -> Protection:
        """A victim's last assessed protection (unknown before its tag is heard)."""
        return self.protection.get(key) or Protection()

    def victims_by_status(self) -> dict[str, int]:
        """How many victims of the cases in force are protected, degraded, unknown."""
        counts = dict.fromkeys((protection.PROTECTED, protection.DEGRADED, protection.UNKNOWN), 0)
        states = self.protection
        for key in list(self.protected):
            state = states.get(key)
            counts[state.status if state is not None else protection.UNKNOWN] += 1
        return counts

    def _arm(self, tag: str, st: TagState, kind: str) -> None:
        if (tag, kind) in self.watch.armed:
            return  # arming again would change nothing (and this runs per fix)
        cases = self.tag_cases.get(tag)
        if cases:
            due = watchdog.deadline(st, kind, cases[0][1])
            if due is not None:
                self.watch.arm(tag, kind, due)

    # -- tag fixes -------------------------------------------------------------

    def tag_fix(self, fix: Fix, xyz: tuple | None, rows: Iterator, em: Emitter) -> None:
        """A live fix; `rows` are its (zone index, inside, distance, active) rows."""
        st = self.tags[fix.tag]
        before = _protection_inputs(st)
        self._tag_fix(fix, st, xyz, rows, em)
        if _protection_inputs(st) != before or self._device_turned(fix.tag, fix.ts):
            self._protect(self.tag_protected.get(fix.tag, ()), fix.ts, em)

    def _tag_fix(
        self, fix: Fix, st: TagState, xyz: tuple | None, rows: Iterator, em: Emitter
    ) -> None:
        tag, cases = fix.tag, self.tag_cases[fix.tag]
        st.last_msg_ts = fix.ts
        self._arm(tag, st, watchdog.NO_COMMS)
        if st.no_comms is not None:
            watchdog.end(st, tag, watchdog.NO_COMMS, fix.ts, cases, em)
        if fix.strap is not None:
            tag_rules.tamper(st, tag, fix, cases, em)
        if fix.bat is not None:
            st.bat = fix.bat
            tag_rules.battery(st, tag, fix, cases, em)
        if fix.lat is None or xyz is None:
            self._no_position(st, fix, cases, em)
            return
        plausible = not tag_rules.jumped(st, tag, fix, xyz, cases, em)
        if st.no_fix is not None:
            watchdog.end(st, tag, watchdog.NO_FIX, fix.ts, cases, em)
        previous, st.last_pos_ts = st.last_pos_ts, fix.ts
        rows = list(rows)
        worth = self._weight(st, fix, xyz, rows, plausible, previous)
        nearest = self._zones(st, fix, rows, plausible, em, worth)
        if plausible:
            st.usual, st.usual_n = evidence.learn_usual(st.usual, st.usual_n, fix)
            st.lon, st.lat, st.acc, st.pos_ts, st.xyz = fix.lon, fix.lat, fix.acc, fix.ts, xyz
            _remember_position(st, fix, cases[0][1])
        nearest = min(nearest, self._victims(st, fix, xyz, plausible, em))
        st.near = nearest <= cases[0][1].near_m
        self._rate(st, tag, nearest, cases[0][1], em)

    def quiet_fix(self, fix: Fix, xyz: tuple) -> bool:
        """Bookkeeping only, for a live positioned fix that the caller found farther than
        `horizon_m` from every zone of its tag (and outside no active curfew zone).

        Returns False, changing nothing, when any rule could still have something to
        say (an open track or episode, a device event, a possible jump, a victim
        device nearby, a report-rate change): then the caller uses `tag_fix`.
        """
        tag = fix.tag
        st = self.tags[tag]
        if st.zones or st.victims or st.no_comms or st.no_fix or st.rate != "far" or st.near:
            return False  # near: an open protection.degraded may turn warning
        rules = self.tag_rules[tag]
        if (fix.strap is not None or fix.bat is not None) and not _device_quiet(st, fix, rules):
            return False
        if tag_rules.jump(st, fix, xyz, rules):
            return False
        victims = self.tag_victims.get(tag)
        if victims and (
            self._victim_near(victims, fix, xyz, rules) or self._device_turned(tag, fix.ts)
        ):
            return False
        ts = fix.ts
        if fix.bat is not None:
            st.bat = fix.bat
        st.last_msg_ts = st.last_pos_ts = st.pos_ts = ts
        st.lon, st.lat, st.acc, st.xyz, st.near = fix.lon, fix.lat, fix.acc, xyz, False
        st.usual, st.usual_n = evidence.learn_usual(st.usual, st.usual_n, fix)
        _remember_position(st, fix, rules)
        if (tag, watchdog.NO_COMMS) not in self.watch.armed:
            self.watch.arm(tag, watchdog.NO_COMMS, ts + rules.no_comms_s)
        return True

    def _victim_near(self, victims: list[VictimInfo], fix: Fix, xyz: tuple, rules: Rules) -> bool:
        """A victim device of the tag with a fresh position within `quiet_m` of the fix."""
        for victim in victims:
            device = self.devices.get(victim.device)
            if (
                device is not None
                and abs(fix.ts - device.ts) <= rules.victim_fresh_s
                and chord(xyz, device.xyz) <= self.quiet_m
            ):
                return True
        return False

    def _no_position(self, st: TagState, fix: Fix, cases, em: Emitter) -> None:
        self._arm(fix.tag, st, watchdog.NO_FIX)
        rules = cases[0][1]
        since = st.last_pos_ts
        if st.no_fix is None and since is not None and fix.ts - since >= rules.no_fix_s:
            watchdog.fire(st, fix.tag, watchdog.NO_FIX, fix.ts, cases, em)

    def _weight(
        self, st: TagState, fix: Fix, xyz: tuple, rows: list, plausible: bool, previous
    ) -> evidence.Worth:
        """The fix's worth as evidence of a breach (engine/evidence.py). The motion model
        runs only within MOTION_M of an exclusion zone, or near a curfew zone, or while
        a breach is open; elsewhere it is dropped."""
        exclusion = self.zone_exclusion
        breach = any(t.breach is not None for t in st.zones.values())
        if not breach and not any(d <= MOTION_M or not exclusion[z] for z, _i, d, _a in rows):
            st.motion = None
            return evidence.PLAIN
        if not plausible:
            return evidence.NOTHING  # a jump: tested against the zones, never evidence
        if fix.ts == st.ahead_ts and (st.last_ts is None or fix.ts > st.last_ts):
            # dated ahead of its arrival (DESIGN 3.2 Order): tested against the zones, but
            # neither evidence nor a position for the motion model, whose clock it would
            # move past the correct fixes that follow it
            if st.motion is not None:
                st.motion.seen = max(st.motion.seen, fix.ts)  # set aside, not "moved on"
            return evidence.NOTHING
        if st.motion is None or (st.pos_ts is not None and st.motion.seen < st.pos_ts):
            st.motion = _seed_motion(st)  # none yet, or the quiet path has moved on since
        odd = evidence.unusual(st.usual, fix)
        through = evidence.through(st.motion, fix, xyz)  # before judge moves the anchor
        st.motion, verdict = evidence.judge(st.motion, fix, xyz, odd)
        apart = math.inf if previous is None else fix.ts - previous
        return evidence.worth(verdict, apart, odd, through)

    def _zones(
        self,
        st: TagState,
        fix: Fix,
        rows: list,
        plausible: bool,
        em: Emitter,
        worth: evidence.Worth = evidence.PLAIN,
    ) -> float:
        """Zone rules for one fix; returns the distance to the nearest exclusion zone."""
        nearest = math.inf
        visiting: set[str] = set()
        for z, _inside, distance, active in rows:
            exclusion = self.zone_exclusion[z]
            if exclusion:
                nearest = min(nearest, distance)
            found = self._track(st, z, self._worth_a_track(exclusion, distance, active))
            if found is None:
                continue
            info, track, new = found
            if new and exclusion:
                self._seed_window(track, z, fix.tag, st)
            view = FixView(fix.tag, fix, distance, plausible, distance <= self.quiet_m, *worth)
            opened = zone_rules.apply(track, info, view, active, em)
            if zone_rules.ZONE_WARNING in opened or (
                zone_rules.BREACH in opened and track.warning is None
            ):
                em.command(fix.tag, warn_command(WARN_TEXT))  # the offender is told first
            if track.warning or track.approach or track.loiter:
                visiting.add(info.case)
            if track.quiet() and track.inside_run == 0 and track.exit_run == 0:
                del st.zones[info.key]
        for case in sorted(visiting):
            patterns.activity(st, fix.tag, case, fix, self._case_rules(fix.tag, case), em)
        return nearest

    def _track(self, st: TagState, z: int, worth: bool) -> tuple[ZoneInfo, ZoneTrack, bool] | None:
        """Zone `z`'s context and the tag's track for it (new when `worth` one and there
        was none: the bool says so); None when there is no track and none is worth it."""
        if not worth and not st.zones:
            return None  # before the ZoneInfo is made: most zones never come near their tag
        info = self.zone_info[z]
        track = st.zones.get(info.key)
        if track is not None:
            return info, track, False
        if not worth:
            return None
        track = st.zones[info.key] = ZoneTrack()
        return info, track, True

    def _seed_window(self, track: ZoneTrack, z: int, tag: str, st: TagState) -> None:
        """A zone comes within range: fill its approach window from the tag's recent
        positions, so an approach is judged on the last approach_window_s at once."""
        if not st.track:
            return
        ts, lon, lat, acc = recent.track_columns(st.track)
        tag_idx = np.full(len(ts), self.zoneset.tag_index(tag))
        ev = self.zoneset.evaluate(tag_idx, lon, lat)
        for f, d in zip(
            ev.fix[ev.zone == z].tolist(), ev.distance_m[ev.zone == z].tolist(), strict=True
        ):
            if d <= 0:
                track.window.clear()
            else:
                track.window.append((float(ts[f]), d, float(acc[f])))

    def _worth_a_track(self, exclusion: bool, distance: float, active: bool) -> bool:
        if not active:
            return False
        if exclusion:
            return distance <= self.quiet_m
        return distance > 0  # outside an active curfew zone

    def _case_rules(self, tag: str, case: str) -> Rules:
        return next(r for c, r in self.tag_cases[tag] if c == case)

    def _victims(self, st: TagState, fix: Fix, xyz: tuple, plausible: bool, em: Emitter) -> float:
        nearest = math.inf
        for victim in self.tag_victims.get(fix.tag, ()):
            device = self.devices.get(victim.device)
            if device is None:
                continue
            track = st.victims.get(victim.key)
            age = abs(fix.ts - device.ts)
            if age > victim.rules.victim_fresh_s:
                if track is not None:
                    view = FixView(fix.tag, fix, chord(xyz, device.xyz), plausible)
                    victim_rules.stale(track, victim, view, em, age)
                    victim_rules.forget_window(track)
                    following.stale(track, victim, view, em)
                continue
            distance = chord(xyz, device.xyz)
            nearest = min(nearest, distance)
            if track is None:
                if distance > self.quiet_m:
                    continue
                track = st.victims[victim.key] = VictimTrack()
            view = FixView(fix.tag, fix, distance, plausible)
            judged = victim_rules.judged_against(device, fix.ts, victim.rules.victim_fresh_s)
            near = FixView(fix.tag, fix, chord(xyz, judged.xyz), plausible)
            victim_rules.proximity(track, victim, near, em, fix.ts, judged)
            if self._approach_device(track, victim, view, xyz, device, em) or track.approach:
                patterns.activity(st, fix.tag, victim.case, fix, victim.rules, em)
            if plausible and following.worth(track, distance, victim, fix.acc + device.acc):
                fallback = (device.xyz, device.acc)
                following.step(track, victim, view, xyz, device.track, fallback, em)
        return nearest

    def _approach_device(
        self,
        track: VictimTrack,
        victim: VictimInfo,
        view: FixView,
        xyz: tuple,
        device: DeviceState,
        em: Emitter,
    ) -> bool:
        """Approach to a victim device, measured to its last position dated *before* the
        tag fix. A device fix of the same event time counts from the tag's next fix,
        whichever of the two arrived first: MQTT orders no two topics, and the approach
        window (so the episode's id) must not depend on which came first."""
        earlier = following.device_before(device.track, view.fix.ts)
        if earlier is None and device.ts < view.fix.ts:  # a ring from an older checkpoint
            earlier = device.ts, device.xyz
        if earlier is None or view.fix.ts - earlier[0] > victim.rules.victim_fresh_s:
            victim_rules.forget_window(track)  # no distance to measure: no closing speed
            return False
        measured = FixView(view.tag, view.fix, chord(xyz, earlier[1]), view.plausible)
        return victim_rules.approach_device(track, victim, measured, em)

    def _rate(self, st: TagState, tag: str, nearest: float, rules: Rules, em: Emitter) -> None:
        busy = any(t.breach or t.warning or t.approach for t in st.zones.values()) or any(
            t.proximity or t.approach for t in st.victims.values()
        )
        if busy:
            level = "fast"
        elif nearest <= rules.approach_max_m or (
            st.rate == "near" and nearest <= rules.approach_max_m + 200
        ):
            level = "near"  # close enough to approach: enough fixes to judge a closing speed
        else:
            level = "far"
        if level != st.rate:
            st.rate = level
            em.command(tag, rate_command(RATE_S[level]))

    # -- late fixes --------------------------------------------------------------

    def late_fix(self, fix: Fix, rows: Iterator, em: Emitter) -> None:
        """An out-of-order fix: the late-breach check only, never the live rules."""
        st = self.tags[fix.tag]
        for z, _inside, distance, active in rows:
            exclusion = self.zone_exclusion[z]
            # Only a fix inside an active exclusion zone (outside an active curfew zone)
            # can show an earlier breach.
            found = self._track(st, z, active and (distance <= 0 if exclusion else distance > 0))
            if found is None:
                continue
            info, track, _new = found
            zone_rules.late(track, info, FixView(fix.tag, fix, distance, False), active, em)

    def end_late_runs(self, tag: str) -> None:
        """A live fix ends every run of late fixes of its tag."""
        st = self.tags.get(tag)
        if st is not None:
            for track in st.zones.values():
                track.late_run = None

    # -- victim devices ------------------------------------------------------------

    def victim_fix(self, fix: Fix, xyz: tuple, em: Emitter) -> None:
        device = self.devices.get(fix.tag)
        if device is not None and fix.ts <= device.ts:
            return  # an older or duplicate victim position moves nothing
        ring = self._device_ring(fix, xyz, device)
        coarse = evidence.coarse(fix)
        good = device.good if device is not None else None
        if not coarse:
            good = (fix.ts, *xyz, fix.acc)
        device = self.devices[fix.tag] = DeviceState(
            fix.ts, fix.lon, fix.lat, xyz, fix.acc, coarse, ring, good
        )
        self.dirty.add(f"device:{fix.tag}")
        self._protect(self.device_protected.get(fix.tag, ()), fix.ts, em)
        for tag, victim in self.device_victims.get(fix.tag, ()):
            st = self.tags.get(tag)
            if st is None or st.xyz is None or st.pos_ts is None:
                continue
            if abs(fix.ts - st.pos_ts) > victim.rules.victim_fresh_s:
                continue
            track = st.victims.get(victim.key)
            distance = chord(st.xyz, xyz)
            if track is None:
                if distance > victim.radius_m:
                    continue
                track = st.victims[victim.key] = VictimTrack()
            last = Fix(tag=tag, ts=st.pos_ts, lat=st.lat, lon=st.lon, acc=st.acc or 15.0)
            view = FixView(tag, last, distance, True)
            victim_rules.proximity(track, victim, view, em, fix.ts, device)
            self.dirty.add(tag)

    def _device_ring(self, fix: Fix, xyz: tuple, device: DeviceState | None) -> bytes:
        """The device's recent positions for pattern.following, over the longest
        follow_window_s of its cases (engine/following.py)."""
        victims = self.device_victims.get(fix.tag, ())
        window = max((v.rules.follow_window_s for _t, v in victims), default=0.0)
        if not window:
            return b""
        ring = device.track if device is not None else b""
        return following.device_add(ring, fix.ts, tuple(xyz), fix.acc, fix.ts - window)

    # -- checkpoints ------------------------------------------------------------------

    def checkpoints(self) -> dict[str, bytes]:
        """Snapshots of what changed since the last call, keyed `tag:ID` / `device:ID`."""
        out = {}
        for key in self.dirty:
            if key.startswith("device:"):
                out[key] = dump(self.devices[key[7:]])
            elif key.startswith("victim:"):
                out[key] = protection.dump(self.protection[key[7:]])
            elif key in self.tags:
                out[f"tag:{key}"] = dump(self.tags[key])
        out["engine:clock"] = repr(self.clock).encode()
        self.dirty.clear()
        return out

    def restore(self, checkpoints: dict[str, bytes]) -> None:
        for key, blob in checkpoints.items():
            if key.startswith("tag:"):
                self.tags[key[4:]] = load_tag(blob)
            elif key.startswith("device:"):
                self.devices[key[7:]] = load_device(blob)
            elif key.startswith("victim:"):
                self.protection[key[7:]] = protection.load(blob)
            elif key == "engine:clock":
                self.clock = float(blob.decode())
        for tag, st in self.tags.items():
            if st.no_comms is None:
                self._arm(tag, st, watchdog.NO_COMMS)
            positioned = st.last_pos_ts if st.last_pos_ts is not None else -math.inf
            if st.no_fix is None and st.last_msg_ts is not None and st.last_msg_ts > positioned:
                self._arm(tag, st, watchdog.NO_FIX)


class ZoneInfos(dict):
    """The ZoneInfo of each zone index, made when a rule first looks at the zone: in
    a large caseload most zones never come within the horizon of their tag, and one
    made for every zone would cost 0.15 KB each for nothing. A dict, so that a zone
    already seen costs one lookup."""

    def __init__(self, zoneset: ZoneSet, case_rules: dict[str, Rules]) -> None:
        super().__init__()
        self.zones = zoneset.zones
        self.case_rules = case_rules

    def __missing__(self, z: int) -> ZoneInfo:
        zone = self.zones[z]
        info = self[z] = ZoneInfo(
            f"{zone.case_id}/{zone.zone_id}",
            zone.case_id,
            zone.zone_id,
            zone.kind == "exclusion",
            self.warn_m(zone),
            zone.victim,
            self.case_rules[zone.case_id],
        )
        return info

    def warn_m(self, zone: Zone) -> float:
        return zone.warn_m if zone.warn_m is not None else self.case_rules[zone.case_id].warn_m


def _device_quiet(st: TagState, fix: Fix, rules: Rules) -> bool:
    """No tamper or battery transition in this fix."""
    strap = fix.strap
    if strap is not None and (strap == "tamper") != st.tampered:
        return False
    bat = fix.bat
    if bat is None:
        return True
    low = rules.battery_low_pct
    return bat > low if st.battery_armed else bat < low + 10


def _protection_inputs(st: TagState) -> tuple:
    """What a victim's protection status reads of a tag (engine/protection.py)."""
    return (st.last_msg_ts is None, st.no_comms, st.no_fix, st.battery_armed, st.tampered, st.near)


def _seed_motion(st: TagState) -> Motion | None:
    """A motion model from what the quiet path kept: the last plausible position and,
    from the two latest of the recent track, a velocity."""
    if st.xyz is None or st.pos_ts is None:
        return None
    m = Motion(st.pos_ts, *st.xyz, st.acc or 15.0)
    if len(st.track) >= 64:  # two rows of (ts, lon, lat, acc) doubles
        ts, lon, lat, _acc = recent.track_columns(st.track)
        dt = float(ts[-1] - ts[-2])
        if dt > 0 and ts[-1] == st.pos_ts:
            a, b = ecef(lon[-2:], lat[-2:]).tolist()
            m.vx, m.vy, m.vz = ((b[k] - a[k]) / dt for k in range(3))
            m.known = 2
    return m


def _remember_position(st: TagState, fix: Fix, rules: Rules) -> None:
    oldest = fix.ts - rules.approach_window_s
    st.track = recent.track_add(st.track, fix.ts, fix.lon, fix.lat, fix.acc, oldest)
