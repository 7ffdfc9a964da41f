"""Per-tag and per-device rule state: explicit, small, and checkpointable.

Everything the rules remember lives here, so a restart that restores these
structs resumes exactly where it stopped: hysteresis counters, approach
windows, open episodes and watchdog times. Keys are stable across case
reloads: a zone is `case/zone`, a victim is `case/victim`.
"""

from __future__ import annotations

import msgspec

# gc=False: these structs never form reference cycles, so the garbage collector
# need not track (and walk) the hundreds of thousands of them a caseload holds.


class Episode(msgspec.Struct, gc=False):
    """An open alert episode: its id, when it opened, and what was last published."""

    id: str
    opened: float
    severity: str
    confidence: str | None = None


class Motion(msgspec.Struct, gc=False):
    """A tag's motion near a zone (engine/evidence.py): the last trusted position (ECEF
    metres), its accuracy, a smoothed velocity, and the displaced fixes since."""

    ts: float
    x: float
    y: float
    z: float
    acc: float
    vx: float = 0.0
    vy: float = 0.0
    vz: float = 0.0
    known: int = 0  # trusted moves since the anchor was set: the velocity is known from 2
    seen: float = 0.0  # the latest fix judged (an older one than the tag's: the quiet path ran)
    # the anchor before this one (ts, x, y, z, acc), when a trusted move replaced it: the
    # fix before a zone's fix inside (evidence.through)
    back: tuple[float, float, float, float, float] | None = None
    run: list[tuple[float, float, float, float, float]] = msgspec.field(default_factory=list)
    # (ts, dx, dy, dz, acc): a fix that ended a displaced run moved the anchor (of that acc)
    # off where its motion led by (dx, dy, dz) (evidence._returns); None: no such jump
    jump: tuple[float, float, float, float, float] | None = None


class ZoneTrack(msgspec.Struct, gc=False):
    breach: Episode | None = None
    inside_run: int = 0  # consecutive fixes inside (confirms a breach)
    evidence: float = 0.0  # pieces of evidence of the open breach (engine/evidence.py)
    held: float = 0.0  # pieces withheld from displaced fixes inside, until their run is judged
    # depth (in sigmas, up to 1) of the fixes inside on a walk's track (zone_rules._walked_out)
    walk: float = 0.0
    exit_run: int = 0  # consecutive fixes clearly outside (ends a breach)
    warning: Episode | None = None
    warn_clear_run: int = 0
    approach: Episode | None = None
    approach_low_run: int = 0
    window: list[tuple[float, float, float]] = msgspec.field(default_factory=list)  # ts, d, acc
    loiter_start: float | None = None
    loiter_last: float | None = None
    loiter: Episode | None = None
    late_run: str | None = None  # id of the late breach of the current run of late fixes

    def quiet(self) -> bool:
        """Nothing open and nothing counting: the track can be dropped."""
        return (
            self.breach is None
            and self.warning is None
            and self.approach is None
            and self.loiter is None
            and self.loiter_start is None
            and not self.window
            and self.late_run is None
        )


class VictimTrack(msgspec.Struct, gc=False):
    proximity: Episode | None = None
    clear_run: int = 0
    approach: Episode | None = None
    approach_low_run: int = 0
    window: list[tuple[float, float, float]] = msgspec.field(default_factory=list)
    # pattern.following (engine/following.py); new fields default: old checkpoints load
    follow: Episode | None = None
    follow_held: float | None = None  # the last tag fix at which following held
    # (ts, tag x, y, z, acc, device x, y, z, acc) while within follow_m, over the window
    follow_run: list[tuple[float, ...]] = msgspec.field(default_factory=list)


class Visit(msgspec.Struct, gc=False):
    start: float
    end: float
    alerted: bool = False


class TagState(msgspec.Struct, gc=False):
    last_ts: float | None = None  # latest live fix not dated ahead of its arrival: the
    # ordering watermark (DESIGN 3.2 Order)
    ahead_ts: float | None = None  # latest live fix dated ahead of its arrival (no watermark)
    last_msg_ts: float | None = None
    last_pos_ts: float | None = None
    lon: float | None = None  # last plausible position (jump reference)
    lat: float | None = None
    acc: float | None = None
    pos_ts: float | None = None
    xyz: tuple[float, float, float] | None = None  # ECEF of the last plausible position
    near: bool = False  # last position within near_m of an exclusion zone or victim
    # Packed memories (engine/recent.py), a fifth of the size of lists of tuples. Their
    # names are new: a checkpoint from before they were packed still loads, its lists
    # (positions, recent_seqs, payloads, history) ignored; `seqs` still knows every seq.
    last_fixes: bytes = b""  # (ts, lat, lon, seq) of the last RECENT fixes
    upload_digests: bytes = b""  # 8-byte digests of the last 16 buffered uploads
    track: bytes = b""  # (ts, lon, lat, acc) of plausible fixes within approach_window_s:
    # seeds the approach window of a zone the tag comes within range of
    seqs: list[list[int]] = msgspec.field(default_factory=list)  # every seen seq, as [lo, hi]
    battery_armed: bool = True
    tampered: bool = False
    no_comms: Episode | None = None
    no_fix: Episode | None = None
    rate: str | None = None
    zones: dict[str, ZoneTrack] = msgspec.field(default_factory=dict)
    victims: dict[str, VictimTrack] = msgspec.field(default_factory=dict)
    visits: dict[str, list[Visit]] = msgspec.field(default_factory=dict)  # per case
    motion: Motion | None = None  # near a zone only; new fields default: old checkpoints load
    bat: float | None = None  # the last battery level reported (GET /api/cases)
    # the accuracy the tag usually reports, from its last usual_n fine fixes (0: not known)
    usual: float = 0.0
    usual_n: int = 0


class DeviceState(msgspec.Struct, gc=False):
    """A victim device's last position (it moves that victim's mobile zone)."""

    ts: float
    lon: float
    lat: float
    xyz: tuple[float, float, float]
    acc: float = 15.0
    coarse: bool = False  # fix "lbs" or acc of hundreds of metres: no critical proximity alone
    track: bytes = b""  # (ts, x, y, z, acc) over follow_window_s (engine/following.py)
    # (ts, x, y, z, acc) of its last fix that was not coarse (victim_rules.judged_against)
    good: tuple[float, float, float, float, float] | None = None


_encoder = msgspec.msgpack.Encoder()
_tag_decoder = msgspec.msgpack.Decoder(TagState)
_device_decoder = msgspec.msgpack.Decoder(DeviceState)


def dump(state: TagState | DeviceState) -> bytes:
    return _encoder.encode(state)


def load_tag(blob: bytes) -> TagState:
    return _tag_decoder.decode(blob)


def load_device(blob: bytes) -> DeviceState:
    return _device_decoder.decode(blob)
