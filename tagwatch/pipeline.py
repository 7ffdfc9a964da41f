"""The path of a fix, in one place: decode, order and dedupe, geometry, rules.

    messages -> [signatures, when signing is on] -> decode (wire) -> per-tag
    order/dedupe (engine) -> geometry (zones, one vectorised call per batch) ->
    rules (engine, one fix at a time in arrival order)

Signing (DESIGN 5, tagwatch/signing.py) is on when the pipeline has keys. A
tag's fixes must then be signed with its key and fresh: the replay check reads
the seqs the engine already remembers per tag (TagState.seqs), so it survives a
restart with the engine's checkpoints and needs no state of its own. A victim
device is checked only when it has a key (its firmware may not sign); a
replayed victim position is harmless anyway, since the engine ignores a victim
fix not newer than the device's last one.

The daemon and `tagwatch replay` both call `Pipeline.process`; only the clock
differs (wall-clock ticks in the daemon, event time in replay). Batching only
moves the geometry in front of the rules: every decision is the one that
processing the same messages one by one would make.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Protocol

import numpy as np

from tagwatch import signing
from tagwatch.config import Rules
from tagwatch.engine import seqs
from tagwatch.engine.alerts import AlertRecord
from tagwatch.engine.core import DUPLICATE, LATE, Engine
from tagwatch.engine.emit import Emitter, Output
from tagwatch.engine.state import TagState
from tagwatch.ingest.ratelimit import REPORT_S, TokenBuckets
from tagwatch.wire import (
    OWNTRACKS,
    Fix,
    Rejection,
    Topics,
    decode_fix,
    decode_payload,
    owntracks_payload,
)
from zones import ZoneSet, ecef
from zones.models import OWNTRACKS_DEVICE


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    received: float | None = None  # receiving clock, Unix seconds (None: no future check)


class Received(Protocol):
    """What the pipeline reads of a message: an Inbound, or the daemon's MQTT message as
    it is (no copy per message)."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def received(self) -> float | None: ...


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
    rate_limited: int = 0  # messages over their tag's rate, counted only (not in rejected)
    ignored: Counter = field(default_factory=Counter)  # OwnTracks messages by `_type`

    def rejected_by_reason(self) -> Counter:
        return Counter(r.rejection.reason for r in self.rejected)


VICTIM = "victim"
TOPIC_CACHE = 200_000  # parsed topics kept; one per tag and device
INTERNAL_ERROR = "internal_error"
# Reasons the pipeline gives besides the wire decoder's (wire.REASONS) and signing's.
RATE_LIMITED = "rate_limited"
REASONS = frozenset(
    {"unknown_tag", "unknown_device", "unknown_topic", INTERNAL_ERROR, RATE_LIMITED}
)
FAULT_ENV = "TAGWATCH_TEST_FAULT"  # tests only: see Pipeline.fault


class InjectedFault(RuntimeError):
    """The failure a test asks for with `Pipeline.fault` (FAULT_ENV in the daemon)."""


class Pipeline:
    def __init__(
        self,
        zoneset: ZoneSet,
        rules: Rules,
        topics: Topics,
        event_clock: bool,
        keys: dict[str, bytes] | None = None,
        rate_limit: tuple[float, int] | None = None,
    ) -> None:
        self.engine = Engine(zoneset, rules)
        # (messages a second, burst) per fix topic; None or a rate of 0: no limit
        self.limiter = TokenBuckets(*rate_limit) if rate_limit and rate_limit[0] > 0 else None
        self.rules = rules
        self.topics = topics
        self.event_clock = event_clock
        self.keys = keys  # device id -> signing key; None: signing off
        self._topic_cache: dict[str, tuple[str, str] | None] = {}
        self._tag_topics: dict[str, str] = {}  # fix topic of a known tag -> the tag's id
        # Fault injection, for tests of the isolation of failing messages only: a batch
        # with a payload containing these bytes fails after decoding, as a bug would.
        self.fault: bytes | None = None

    @property
    def zoneset(self) -> ZoneSet:
        return self.engine.zoneset

    def reload(self, zoneset: ZoneSet) -> None:
        self.engine.configure(zoneset)
        self._tag_topics.clear()  # the known tags may have changed

    def set_keys(self, keys: dict[str, bytes] | None) -> None:
        """New signing keys (SIGHUP); None turns signing off. Replay state is kept."""
        self.keys = keys

    def process(self, messages: Sequence[Received], raised: float | None = None) -> Result:
        result = Result()
        out = Output()
        fixes, kinds = self._decode(messages, result)
        if self.fault is not None and any(self.fault in m.payload for m in messages):
            raise InjectedFault("a payload holds the fault marker (Pipeline.fault)")
        lon, lat, ts, tag_idx = self._arrays(fixes, kinds)
        xyz = ecef(lon, lat)
        rows = self._geometry(tag_idx, lon, lat, ts, xyz)
        self._rules(fixes, kinds, rows, xyz, Emitter(out, raised))
        result.records, result.commands = out.records, out.commands
        return result

    def checkpoints(self) -> dict[str, bytes]:
        """Rule state changed since the last call, to commit with the batch's effects."""
        return self.engine.checkpoints()

    def restore(self, checkpoints: dict[str, bytes]) -> None:
        self.engine.restore(checkpoints)

    def reset(self, checkpoints: dict[str, bytes]) -> None:
        """Forget all rule state and take `checkpoints` (the last committed ones): the
        state a restart would have. Undoes a batch whose handling failed half way."""
        self.engine = Engine(self.engine.zoneset, self.rules)
        self.engine.restore(checkpoints)

    def set_aside(self, msg: Received, error: BaseException) -> Result:
        """The rejection of a message whose handling failed (DESIGN 3.2 internal_error):
        its SHA-256 and the failure's type, so it can be found again and the others go on."""
        parsed = self._parse(msg.topic)
        digest = hashlib.sha256(msg.payload).hexdigest()
        detail = (
            f"handling this message failed ({type(error).__name__}); it was set aside so "
            f"that the others go on; payload SHA-256 {digest}"
        )
        rejected = _reject(_source(parsed), INTERNAL_ERROR, detail, msg)
        if self._private(parsed):
            rejected = _unquoted(rejected, parsed is not None)
        return Result(rejected=[rejected])

    def tick(self, now: float, raised: float | None = None) -> Result:
        """Advance the watchdog clock (the daemon's wall-clock tick)."""
        out = Output()
        self.engine.advance(now, Emitter(out, raised))
        return Result(records=out.records, commands=out.commands)

    def _parse(self, topic: str) -> tuple[str, str] | None:
        parsed = self._topic_cache.get(topic, False)
        if parsed is False:
            if len(self._topic_cache) >= TOPIC_CACHE:
                self._topic_cache.clear()
                self._tag_topics.clear()
            parsed = self._topic_cache[topic] = self.topics.parse(topic)
        return parsed

    def _known_tag(self, topic: str) -> str | None:
        """The id of the known tag whose fix topic this is, else None (remembered)."""
        parsed = self._parse(topic)
        if parsed is None or parsed[0] != "tag" or not self.engine.knows_tag(parsed[1]):
            return None
        self._tag_topics[topic] = parsed[1]
        return parsed[1]

    def _decode(self, messages: Sequence[Received], result: Result) -> tuple[list[Fix], list[str]]:
        """Accepted fixes in arrival order, each with its kind (live, late or victim)."""
        fixes: list[Fix] = []
        kinds: list[str] = []
        accepted = result.accepted
        classify = self.engine.classify
        tag_topics, max_future = self._tag_topics, self.rules.max_future_s
        shortcut = self.keys is None  # signed payloads are screened first: no shortcut
        limiter = self.limiter
        for msg in messages:
            if limiter is not None:  # before anything costs: the excess of a flood is cheap
                received = msg.received
                if received is not None and not limiter.admit(msg.topic, received):
                    self._limited(limiter, msg, received, result)
                    continue
            payload = msg.payload
            # The common message, one valid fix object from a known tag, the short way;
            # what `_decode_message` would do with it, without its checks for the rest.
            tag = (tag_topics.get(msg.topic) or self._known_tag(msg.topic)) if shortcut else None
            if tag is not None:  # decode_fix refuses an array (a buffered upload) too
                fix = decode_fix("tag", tag, payload, msg.received, max_future)
                if fix is not None:
                    kind = classify(fix, msg.received)
                    if kind == DUPLICATE:
                        result.duplicates += 1
                    else:
                        fixes.append(fix)
                        kinds.append(kind)
                        accepted.append((fix, kind == LATE))
                    continue
            first = len(result.rejected)
            parsed = self._decode_message(msg, result, fixes, kinds)
            if self._private(parsed):
                for i in range(first, len(result.rejected)):
                    result.rejected[i] = _unquoted(result.rejected[i], parsed is not None)
        return fixes, kinds

    def _limited(
        self, limiter: TokenBuckets, msg: Received, received: float, result: Result
    ) -> None:
        """A message over its topic's rate: rejected (rate_limited). One per REPORT_S of a
        topic is recorded and published; the rest are only counted."""
        if limiter.report_due(msg.topic, received):
            result.rejected.append(self.rate_limited(msg, limiter))
        else:
            result.rate_limited += 1

    def rate_limited(self, msg: Received, limiter: TokenBuckets) -> Rejected:
        """The rejection of a message over its topic's rate (the daemon's gate takes such
        messages out before batching and asks for it here)."""
        parsed = self._parse(msg.topic)
        detail = (
            f"over {limiter.rate_per_s:g} messages a second (burst {limiter.burst:g}) on "
            f"this topic: the excess is rejected and counted, one of it recorded per "
            f"{REPORT_S:g} s"
        )
        rejected = _reject(_source(parsed), RATE_LIMITED, detail, msg)
        if self._private(parsed):
            rejected = _unquoted(rejected, parsed is not None)
        return rejected

    def _private(self, parsed: tuple[str, str] | None) -> bool:
        """Whether a message's rejections must not quote it (DESIGN 3.2): a victim device's
        payload is the victim's position, on a victim topic or on any other (a known device
        id on the tags path is a victim message); an unrecognised topic may be one."""
        return (
            parsed is None
            or parsed[0] in (VICTIM, OWNTRACKS)
            or self.engine.knows_device(parsed[1])
        )

    def _decode_message(
        self, msg: Received, result: Result, fixes: list[Fix], kinds: list[str]
    ) -> tuple[str, str] | None:
        """Decode one message into `fixes`/`kinds`; returns its parsed topic."""
        engine = self.engine
        parsed = self._parse(msg.topic)
        if parsed is None:
            detail = f"topic {msg.topic!r} is not a fix topic"
            result.rejected.append(_reject("", "unknown_topic", detail, msg))
            return None
        source, ident = parsed
        if source == OWNTRACKS:
            self._owntracks(msg, ident, result, fixes, kinds)
            return parsed
        problem = self._unknown(source, ident)
        if problem:
            result.rejected.append(_reject(ident, *problem, msg))
            return parsed
        # A buffered upload redelivered whole is dropped whole; single fixes are
        # recognised one by one below.
        if (
            source == "tag"
            and msg.payload[:1] == b"["
            and engine.seen_payload(ident, _digest(msg.payload))
        ):
            result.duplicates += 1
            return parsed
        payload = msg.payload
        if self.keys is not None:
            payload = self._screen(source, ident, msg, result)
            if payload is None:
                return parsed
        max_future = self.rules.max_future_s
        decoded, rejections = decode_payload(source, ident, payload, msg.received, max_future)
        if rejections:
            result.rejected.extend(Rejected(ident, r, msg.received) for r in rejections)
        for fix in decoded:
            if source == VICTIM:
                if fix.lat is not None:
                    fixes.append(fix)
                    kinds.append(VICTIM)
                continue
            kind = engine.classify(fix, msg.received)
            if kind == DUPLICATE:
                result.duplicates += 1
                continue
            fixes.append(fix)
            kinds.append(kind)
            result.accepted.append((fix, kind == LATE))
        return parsed

    def _owntracks(
        self, msg: Received, ident: str, result: Result, fixes: list[Fix], kinds: list[str]
    ) -> None:
        """An OwnTracks message (DESIGN 3.1): a `location` is the fix of the victim whose
        case names `owntracks: ident`, checked as any fix; other `_type`s are counted.
        Its rejections name no topic level (USER/DEVICE has a '/') and quote nothing."""
        device = OWNTRACKS_DEVICE + ident
        if not self.engine.knows_device(device):
            detail = f"OwnTracks {ident!r} is the phone of no victim (case member owntracks)"
            result.rejected.append(_reject("", "unknown_device", detail, msg))
            return
        payload, ignored = owntracks_payload(msg.payload)
        if payload is None:
            result.ignored[ignored] += 1
            return
        decoded, rejections = decode_payload(
            "victim", device, payload, msg.received, self.rules.max_future_s
        )
        result.rejected.extend(Rejected("", r, msg.received) for r in rejections)
        for fix in decoded:
            if fix.lat is not None:
                fixes.append(fix)
                kinds.append(VICTIM)

    def _screen(self, source: str, ident: str, msg: Received, result: Result) -> bytes | None:
        """The payload with only its validly signed, fresh fixes; None when none is left."""
        key = self.keys.get(ident) if self.keys else None
        if source == VICTIM:
            if key is None:
                return msg.payload  # victim devices are checked only once they have a key
            last_seq, seen = None, ()
            device = f"device {ident}"
        else:
            if key is None:
                detail = f"no key for tag {ident}: signing is on and its fixes are refused"
                result.rejected.append(_reject(ident, signing.UNSIGNED, detail, msg))
                return None
            last_seq, seen = _replay_state(self.engine.tags.get(ident))
            device = f"tag {ident}"
        screened = signing.screen(msg.payload, device, key, last_seq, signing.DEFAULT_WINDOW, seen)
        result.rejected.extend(
            Rejected(ident, Rejection(r.reason, r.detail, r.excerpt), msg.received)
            for r in screened.refused
        )
        return screened.payload

    def _unknown(self, source: str, ident: str) -> tuple[str, str] | None:
        if source == "tag":
            if not self.engine.knows_tag(ident):
                return "unknown_tag", f"tag {ident!r} belongs to no case"
        elif not self.engine.knows_device(ident):
            return "unknown_device", f"device {ident!r} belongs to no victim"
        return None

    def _arrays(self, fixes: list[Fix], kinds: list[str]):
        # numpy turns a missing position (None) into NaN
        lon = np.array([f.lon for f in fixes], dtype=np.float64)
        lat = np.array([f.lat for f in fixes], dtype=np.float64)
        ts = np.array([f.ts for f in fixes], dtype=np.float64)
        tag_idx = self.engine.zoneset.tag_indices(map(_TAG, fixes))
        if VICTIM in kinds:  # a victim device has no zones, whatever its id
            tag_idx[[i for i, k in enumerate(kinds) if k == VICTIM]] = -1
        return lon, lat, ts, tag_idx

    def _geometry(self, tag_idx, lon, lat, ts, xyz) -> tuple:
        """Each fix's zone rows, and whether the zone rules have anything to look at."""
        zoneset, n = self.engine.zoneset, len(lon)
        ev = zoneset.evaluate(tag_idx, lon, lat, ts, self.engine.horizon_m, xyz)
        starts = np.searchsorted(ev.fix, np.arange(n + 1))
        exclusion = zoneset.zone_exclusion[ev.zone]
        within = (exclusion & (ev.distance_m <= self.engine.horizon_m)) | (
            ~exclusion & ev.active & (ev.distance_m > 0)
        )
        needs = np.zeros(n, dtype=bool)
        needs[ev.fix[within]] = True
        # Rows stay arrays: most fixes take the quiet path and never look at theirs.
        return starts.tolist(), ev.zone, ev.inside, ev.distance_m, ev.active, needs.tolist()

    def _rules(
        self, fixes: list[Fix], kinds: list[str], rows: tuple, xyz: np.ndarray, em: Emitter
    ) -> None:
        starts, zone, inside, distance, active, needs = rows
        points = list(zip(*xyz.T.tolist(), strict=True))  # one (x, y, z) tuple per fix
        engine = self.engine
        advance, quiet_fix = engine.advance, engine.quiet_fix
        event_clock = self.event_clock
        for i, (fix, kind, point, need) in enumerate(zip(fixes, kinds, points, needs, strict=True)):
            if event_clock and kind != LATE and fix.ts > engine.clock:
                advance(fix.ts, em)
            if fix.lat is None:
                point = None
            if kind == VICTIM:
                engine.victim_fix(fix, point, em)
                continue
            if kind != LATE and point is not None and not need and quiet_fix(fix, point):
                continue
            s, e = starts[i], starts[i + 1]
            fix_rows = zip(
                zone[s:e].tolist(),
                inside[s:e].tolist(),
                distance[s:e].tolist(),
                active[s:e].tolist(),
                strict=True,
            )
            if kind == LATE:
                engine.late_fix(fix, fix_rows, em)
            else:
                engine.end_late_runs(fix.tag)
                engine.tag_fix(fix, point, fix_rows, em)


_TAG = attrgetter("tag")


def _source(parsed: tuple[str, str] | None) -> str:
    """The id a rejection is published under: none for an OwnTracks topic (its USER/DEVICE
    is two topic levels) or a topic that names nothing."""
    return parsed[1] if parsed is not None and parsed[0] != OWNTRACKS else ""


class _SeenSeqs:
    """The seqs a tag has used, as a container over the engine's [lo, hi] ranges."""

    __slots__ = ("ranges",)

    def __init__(self, ranges: list[list[int]]) -> None:
        self.ranges = ranges

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and seqs.seen(self.ranges, seq)


def _replay_state(st: TagState | None) -> tuple[int | None, _SeenSeqs | tuple]:
    """The highest seq accepted for a tag (None: none yet) and the seqs it has used."""
    if st is None or not st.seqs:
        return None, ()
    return st.seqs[-1][1], _SeenSeqs(st.seqs)


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=8).digest()


_FIELDS = frozenset({"tag", "ts", "fix", "lat", "lon", "acc", "seq", "spd", "hdg", "bat", "strap"})
_PLACE = re.compile(r"fix \d+ of \d+: ")  # a fix's place in a batch, in a wire detail
# Details that quote no value of the message (ids of the topic, sizes, depths, a hash).
_VALUE_FREE = frozenset(
    {
        "unknown_tag",
        "unknown_device",
        "unknown_topic",
        INTERNAL_ERROR,
        "too_deep",
        "payload_too_large",
        "not_utf8",
        RATE_LIMITED,
    }
)


def _unquoted(rejected: Rejected, redact_detail: bool = True) -> Rejected:
    """The rejection of a victim's message: no payload, and a detail that names the fix of a
    batch, the fields and the reason, never a value (DESIGN 3.2)."""
    r = rejected.rejection
    detail = r.detail
    if redact_detail and r.reason not in _VALUE_FREE:
        place = _PLACE.match(detail)
        rest = detail[place.end() :] if place else detail
        words = (part.split(" ", 1)[0] for part in rest.split("; "))
        fields = ", ".join(dict.fromkeys(w for w in words if w in _FIELDS)) or "payload"
        device = f"device {rejected.source}" if rejected.source else "a victim device"
        detail = (
            f"{place.group() if place else ''}{fields}: {r.reason} "
            f"({device}: a victim's message, its values are not shown)"
        )
    return replace(rejected, rejection=Rejection(r.reason, detail, ""))


def _reject(source: str, reason: str, detail: str, msg: Received) -> Rejected:
    text = msg.payload[:4096].decode("utf-8", errors="replace")[:1024]
    return Rejected(source, Rejection(reason=reason, detail=detail, payload=text), msg.received)
