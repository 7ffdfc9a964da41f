"""What one fix is worth as evidence of a breach (DESIGN 3.6, Confirmation).

Near a zone each tag carries a small motion model (state.Motion): its last
trusted position (the anchor), a smoothed velocity, and the run of displaced
fixes since the anchor. A new fix is judged against it:

- on track (moving, when faster than V_MOVING): where the tag's velocity leads,
  within both fixes' accuracy. It becomes the anchor.
- trusted: within reach of the anchor given its recent motion (it may go on,
  stop or turn; a standing tag may start off at V_START). It becomes the anchor.
- displaced: out of reach (a standing tag 60 m outside does not appear 30 m
  inside 30 s later), or continuing a run of displaced fixes. Displaced fixes
  gather in a run; a run of fixes moving together is one piece of evidence, not
  several: only its first fix counts, and only if a walk could have got there.
- corroborated: the run is explained, by motion (traced back at its own
  velocity it starts at the anchor: the tag really moved), by lasting longer
  than multipath does (PERSIST_S), or by walking on (_walks_on: a walk could have
  made every step and it got farther from the anchor than multipath moves a fix).
  Its last fix becomes the anchor.
- walked: a fix within reach that ends a displaced run, where a walk from the
  anchor through the run leads, farther from the anchor than the run's first fix
  (_went_on): the tag went on, it did not come back where it stood. Trusted, and
  the run proved true.
- returned: a fix that ended a displaced run moved the anchor off its track (a
  jump: onto multipath, as like as not), and this fix, less than PERSIST_S later,
  is where the track led before that jump: the multipath ended. It is trusted and
  becomes the anchor; without this the tag's true fixes would be a displaced run
  that traces back to the multipath, held for PERSIST_S.
- rejoined: on the anchor's track, within the noise, it ends a displaced run that
  jumped (its first fix beyond a walk from the anchor) and is away from where the run
  was (_rejoins): the run was multipath that moved the fixes off the tag and ended, and
  this fix is the tag again. It agrees with the anchor the run's span before it (past
  the errors' correlation), so it is 2 pieces, even with an unusual acc (the sky that
  made the multipath is still there as it ends). A run that starts within a walk may
  be the tag's own move (a stop short of where its walk led): not rejoined.
- coarse: `lbs` or `acc` over COARSE_M. Honest, so it counts when deep enough
  for its accuracy; it never moves the anchor.
- fresh: no anchor to judge by (first fix, or after a gap of STALE_S), or the fix
  is farther beyond the anchor's reach than multipath moves fixes (FAR_M).

`weight` turns a verdict into pieces of evidence for a fix deep inside (by more than
one sigma of its error): 1; 2 for a slow tag's fix on its track or within its reach,
or fresh (SLOW_S or more after the tag's previous fix: one deep, plausible fix is
enough there), a walk on its track, a corroborated run, or a fix that rejoins the
track after a run that jumped; 0 for a displaced fix, except the first of a run
within a walk of the anchor: 1, and 2 for a tag reporting every LONE_S or slower,
which cannot wait for its next fix. A fix whose acc is markedly worse than the tag's
usual (`unusual`: another sky, a street canyon) is worth one piece at most unless it
rejoins (the usual is learned from all the tag's fixes, `learn_usual`, not only the
few near a zone), and when it is off the tag's known track by more than the noise it
is displaced, even within reach: it is no anchor. A displaced fix holds back what it
would be worth if trusted; when its run proves to be the tag's true motion (a
straight move from its first fix to its last, a walk from the anchor at every step,
or a walk on: `corroborated`, `walked`) the fixes it held inside a zone count after
all (zone_rules._credit). A slow tag's fix that ends up far from where the tag was
two fixes before (`through`) shows the anchor between them on its walk: a probable
breach of one shallow fix on a walk's track (`moving`; a slow tag's fix on its
track, ON_TRACK, too) confirms at the exit (zone_rules._walked_out). Errors are
correlated over tens of seconds: fixes closer than INDEPENDENT_S to the previous one
are worth that share of a piece. Pure: state in, state and verdict out.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

from tagwatch.engine.state import Motion
from tagwatch.wire import Fix

COARSE_M = 100.0  # acc beyond this, or fix "lbs": a coarse fix
STALE_S = 600.0  # an anchor older than this judges nothing
SLOW_S = 60.0  # fixes this far apart: a slow tag
# a tag reporting this slowly cannot wait for its next fix (2 min after entry, or more): its
# first fix within a walk of where it stood, beyond a standing tag's reach, is 2 pieces
LONE_S = 90.0
INDEPENDENT_S = 10.0  # fixes closer together share much of their error
PERSIST_S = 210.0  # multipath displaces runs of fixes for at most 180 s: a run longer is true
V_START = 0.5  # m/s: how far a tag standing still may get before its next fix
V_WALK = 1.5  # m/s: a walk: the first fix of a run within this reach is one piece
V_UNKNOWN = 15.0  # m/s: the reach while the tag's motion is not known yet
V_MOVING = 1.0  # m/s: walking or faster along its track: one deep fix is enough
V_MAX = 70.0  # m/s: no run faster than this is explained by motion
SIGMA_PER_ACC = 1.515  # acc is the ~68% radius of a 2-D error: acc / 1.515 per axis
RUN_SPAN_S = 20.0  # a run explained by motion spans at least this
ACC_FLOOR = 8.0  # m: a reported acc below this is taken as this when tracing runs back
THROUGH_NOISE = 2.0  # a walk through a zone ends farther than this many noises from its start
GATE_K = 1.65  # acc is a ~68% radius: 1.65 acc is ~2.5 sigma per axis
RUN_MAX = 64
# a fix whose acc is this much worse than the tag's usual was taken under another sky (a
# street canyon, indoors): where multipath happens. Usual fixes vary by about +-25%.
ACC_UNUSUAL = 1.3
# the usual accuracy is the mean of a tag's first USUAL_N fixes, then a moving average of
# about its last USUAL_N: fewer (the few fixes near a zone) put an honest fix 1.4x over it
USUAL_N = 10
# multipath moves fixes tens of metres, 150 m in the worst canyons (issue 17): a fix this far
# beyond the anchor's reach is the tag's true position after a move the model did not see
# (a drive that slowed, a turn), not a displaced one: the model starts afresh from it
FAR_M = 400.0
# how far multipath moves a fix (issue 17: 30-150 m): a run of fixes a walk could have made
# that gets farther than this from where the tag stood is the tag walking on (_walks_on)
MULTIPATH_M = 150.0

MOVING, ON_TRACK, TRUSTED, CORROBORATED, DISPLACED, DISPLACED_FIRST, COARSE, FRESH = (
    "moving",
    "on_track",
    "trusted",
    "corroborated",
    "displaced",
    "displaced_first",
    "coarse",
    "fresh",
)
# the fix that ends a displaced run lands back on the anchor's track, within the noise: the
# run was multipath, and the anchor and this fix, the run's span apart, agree on the tag
REJOINED = "rejoined"

OFF_TRACK = frozenset({DISPLACED, DISPLACED_FIRST})
# corroborated, but its fixes lie neither on one straight move from its first to its last
# nor on a walk from the anchor (a multipath run that ended as the tag moved on): its last
# fix is the tag's position, but the fixes it held back are not shown true
BENT = "corroborated_bent"
# trusted, and it ends a displaced run as a walk through it that went on: the run is true
WALKED = "walked"


def coarse(fix: Fix) -> bool:
    return fix.fix == "lbs" or fix.acc > COARSE_M


class Worth(NamedTuple):
    """What a fix is worth as evidence of a breach, in the order FixView takes it."""

    weight: float  # pieces of evidence when deep inside
    displaced: bool  # off the tag's motion: it ends no breach
    held: float = 0.0  # what a displaced fix would be worth, should its run prove true
    corroborated: bool = False  # it proved its displaced run true: the run's fixes count
    # on the track of a tag walking or faster (MOVING), or of a slow tag (ON_TRACK); usual acc
    moving: bool = False
    through: bool = False  # with the fix before and the anchor, on one walk that went on


PLAIN = Worth(1.0, False)  # no motion model runs: every fix at face value
NOTHING = Worth(0.0, True)  # a jump, or a fix dated ahead of its arrival


def unusual(usual: float, fix: Fix) -> bool:
    """The fix reports a markedly worse accuracy than the tag `usual`ly does: its sky
    changed (a street canyon, indoors), which is where multipath happens, and an
    urban-canyon fix displaced by tens of metres still reports 10-30 m. Such a fix is
    at most one piece of evidence: it never confirms a breach by itself."""
    return usual > 0 and fix.acc > ACC_UNUSUAL * usual


def learn_usual(usual: float, count: int, fix: Fix) -> tuple[float, int]:
    """The tag's usual accuracy and the fixes it has learned from, after this fix.

    Every plausible fix counts, near a zone or not (a slow tag sends two or three near
    one before it enters): an estimate from so few puts an honest fix at the top of the
    tag's spread over 1.3x one at its bottom. Coarse fixes are another kind of fix."""
    acc = fix.acc
    if acc > COARSE_M or fix.fix == "lbs":  # coarse(), inline: this runs for every fix
        return usual, count
    if count < USUAL_N:
        count += 1
    return usual + (acc - usual) / count, count


def worth(verdict: str, apart: float, odd: bool = False, through: bool = False) -> Worth:
    """The Worth of a fix judged `verdict`, `apart` seconds after the tag's previous one.

    A displaced fix is held back from what it would be worth were it trusted: if its
    run later proves to be the tag's true motion (corroborated), the fixes it held
    inside a zone count after all. A tag standing outside that walks in between two
    fixes is displaced at first (a walk from standing is out of its reach), but the
    fix that follows shows the move: that visit is not lost."""
    w = weight(verdict, apart)
    # an unusual accuracy (unusual()): one piece at most, held back or not; not when the fix
    # rejoins the track (the sky that moved the run is still there as its multipath ends)
    if odd and verdict != REJOINED:
        w = min(w, 1.0)
    if verdict in OFF_TRACK:
        trusted = min(weight(TRUSTED, apart), 1.0 if odd else 2.0)
        return Worth(w, True, max(0.0, trusted - w))
    # a slow tag's fix on its track counts to a walk too: at its pace the track is
    # known only roughly, and the exit fix must show the walk went on (`through`)
    moving = (verdict == MOVING or (verdict == ON_TRACK and apart >= SLOW_S)) and not odd
    corroborated = verdict in (CORROBORATED, WALKED)
    return Worth(w, False, 0.0, corroborated, moving, through and w > 0)


def weight(verdict: str, apart: float) -> float:
    """Pieces of evidence a fix `apart` seconds after the tag's previous one is worth
    (in full when deep inside). Errors are correlated over tens of seconds, so fixes
    closer together than INDEPENDENT_S are worth that much less each."""
    if verdict == DISPLACED:
        return 0.0
    if verdict in (MOVING, ON_TRACK, TRUSTED, WALKED) or (verdict == FRESH and apart < math.inf):
        # a fresh fix after a minute or more (a slow tag, or the first fix after a gap):
        # nothing to judge it by, so as plausible as a slow tag's fix within its reach.
        # The first fix a tag ever sends (no previous one) stays one piece.
        pieces = 2.0 if apart >= SLOW_S else 1.0
    elif verdict == DISPLACED_FIRST:
        pieces = 2.0 if apart >= LONE_S else 1.0
    else:
        pieces = 2.0 if verdict in (CORROBORATED, BENT) else 1.0
    if verdict in (MOVING, REJOINED):  # a rejoined fix is the run's span from the anchor
        return 2.0
    # apart < 0: the previous fix was dated ahead of its arrival (DESIGN 3.2): no credit
    return pieces * min(1.0, max(apart, 0.0) / INDEPENDENT_S)


def judge(m: Motion | None, fix: Fix, xyz: tuple, odd: bool = False) -> tuple[Motion | None, str]:
    """The fix's verdict and the tag's motion model after it.

    An `odd` fix (unusual(): taken under another sky, where multipath happens) is never
    the anchor once the tag's motion is known. Off the track by more than the noise it
    is displaced even within reach: it claims a move (a standing tag starting off) that
    multipath fakes as well. Trusted, it would be the anchor, and the next fix of the
    same episode, displaced as much, would be on its track: two pieces from one error.
    Displaced, it starts a run, and the fixes that move together with it are one
    piece, unless the run proves to be a walk (traced back to the anchor) or lasts
    longer than multipath does. Within the noise it is judged as any other (_hold)."""
    if coarse(fix):
        if m is not None:
            m.seen = fix.ts
        return m, COARSE
    ts, acc = fix.ts, fix.acc
    if m is None or ts - m.ts > STALE_S:
        return Motion(ts, *xyz, acc, seen=ts), FRESH
    m.seen = ts
    dt = ts - m.ts
    err = GATE_K * math.hypot(acc, m.acc)
    if dt <= 0:
        near = _dist(xyz, (m.x, m.y, m.z)) <= err
        return m, TRUSTED if near else DISPLACED
    speed = math.sqrt(m.vx * m.vx + m.vy * m.vy + m.vz * m.vz)
    reach = V_UNKNOWN * dt if m.known < 2 else (V_START + 0.5 * speed) * dt
    ahead = (m.x + m.vx * dt, m.y + m.vy * dt, m.z + m.vz * dt)
    off = _to_segment(xyz, (m.x, m.y, m.z), ahead)
    if off > reach + err + FAR_M:
        # too far for multipath: a move unseen
        return Motion(ts, *xyz, acc, seen=ts), FRESH
    if (
        off <= reach + err
        and not (m.run and off > err and _goes_on(m.run[-1], xyz, acc))
        and not (odd and m.known >= 2 and off > err)  # an odd fix claiming a move
    ):
        # on its track: where its motion leads, without the allowance for starting off
        on_track = m.known >= 2 and off <= err + 0.5 * speed * dt
        rejoined = bool(m.run) and m.known >= 2 and off <= err and _rejoins(m, xyz, acc)
        went_on = False
        if odd and m.known >= 2:
            _hold(m)
        else:
            if m.run:  # it ends a displaced run: the anchor jumps (onto multipath?)
                went_on = _went_on(m, (ts, *xyz, acc))
                m.jump = (ts, *(xyz[k] - ahead[k] for k in range(3)), m.acc)
            _move(m, ts, xyz, acc, dt)
        if rejoined:
            return m, REJOINED
        if on_track and speed >= V_MOVING:
            return m, MOVING  # on a track that multipath would not follow
        if went_on:
            return m, WALKED
        return m, ON_TRACK if on_track else TRUSTED
    if _returns(m, ts, xyz, acc, ahead):
        m.ts, m.x, m.y, m.z, m.acc = ts, *xyz, acc  # the velocity stays: it moved with the tag
        m.run, m.jump = [], None
        return m, TRUSTED
    m.run.append((ts, *xyz, acc))
    # the first fix of a run, if a walk could have got there: one piece for the run
    first = len(m.run) == 1 and _walkable(m, ts, xyz, acc)
    if len(m.run) > RUN_MAX:
        del m.run[0]
    walks = _walks_on(m)
    if walks or _explained(m):
        last = m.run[-1]
        first = m.run[0]
        verdict = CORROBORATED if walks or _straight(m.run) or _walked(m) else BENT
        span = last[0] - first[0]
        if span > 0:
            m.vx, m.vy, m.vz = ((last[k] - first[k]) / span for k in (1, 2, 3))
        else:
            m.vx = m.vy = m.vz = 0.0
        m.ts, m.x, m.y, m.z, m.acc = last
        m.known = 2
        m.run, m.jump = [], None
        m.back = None
        return m, verdict
    return m, DISPLACED_FIRST if first else DISPLACED


def through(m: Motion | None, fix: Fix, xyz: tuple) -> bool:
    """A slow tag's fix, with the anchor and the fix before it (m.back), on one walk that
    went on: this fix is far from the one before the anchor (a tag standing outside
    whose fix multipath put inside comes back where it stood), and the reports came
    at the tag's pace (a gap hides where it went; a tag reporting faster than SLOW_S
    shows a short visit by more fixes inside than one). Judged before `judge`."""
    if m is None or m.back is None or coarse(fix):
        return False
    bts, bx, by, bz, bacc = m.back
    step_in, step_out = m.ts - bts, fix.ts - m.ts
    if step_in < SLOW_S or step_out < SLOW_S or step_out > 2 * step_in:
        return False
    noise = GATE_K * math.hypot(max(bacc, ACC_FLOOR), max(fix.acc, ACC_FLOOR))
    return math.dist((bx, by, bz), xyz) > THROUGH_NOISE * noise


def _returns(m: Motion, ts: float, xyz: tuple, acc: float, ahead: tuple) -> bool:
    """The fix undoes the jump the anchor made when a fix ended a displaced run, less than
    PERSIST_S ago: it lies where the anchor's motion would have led before that jump. That
    jump was onto multipath (it moves the fixes with the tag and ends within PERSIST_S),
    and this fix is the tag back on its own track, not a new displaced run."""
    jump = m.jump
    if jump is None or ts - jump[0] > PERSIST_S:
        return False
    # the error of this fix, of the anchor now, and of the anchor before the jump
    accs = (max(a, ACC_FLOOR) for a in (acc, m.acc, jump[4]))
    gate = GATE_K * math.sqrt(sum(a * a for a in accs))
    size = math.sqrt(sum(c * c for c in jump[1:4]))
    back = math.sqrt(sum((xyz[k] - ahead[k] + jump[k + 1]) ** 2 for k in range(3)))
    return size > gate and back <= gate  # a jump beyond the noise, undone within it


def _rejoins(m: Motion, xyz: tuple, acc: float) -> bool:
    """The fix, on the anchor's track, ends a displaced run that jumped: the run's first fix
    lay beyond a walk from the anchor, and this fix is away from where the run was. The
    run was multipath (it moved the fixes off the tag and ended), and this fix is the tag
    again where its track led. A run that starts within a walk may be the tag's own move
    (it stopped short of where its walk led), and multipath on that track can fake the
    fix that seems to come back to it."""
    first = m.run[0]
    return not _goes_on(m.run[-1], xyz, acc) and not _walkable(m, first[0], first[1:4], first[4])


def _walkable(m: Motion, ts: float, xyz: tuple, acc: float) -> bool:
    """A walk from the anchor, along its track, could have got to the fix by `ts`."""
    dt = ts - m.ts
    speed = math.sqrt(m.vx * m.vx + m.vy * m.vy + m.vz * m.vz)
    ahead = (m.x + m.vx * dt, m.y + m.vy * dt, m.z + m.vz * dt)
    off = _to_segment(xyz, (m.x, m.y, m.z), ahead)
    return off <= (V_WALK + 0.5 * speed) * dt + GATE_K * math.hypot(acc, m.acc)


def _goes_on(last: tuple, xyz: tuple, acc: float) -> bool:
    """The fix is where the run of displaced fixes was: it goes on (the multipath too)."""
    return math.dist((last[1], last[2], last[3]), xyz) <= GATE_K * math.hypot(acc, last[4])


def _straight(run: list) -> bool:
    """Every fix of the run lies where one straight move from its first fix to its last
    puts it at its time, within both fixes' accuracy."""
    first, last = run[0], run[-1]
    span = last[0] - first[0]
    if span <= 0:
        return True
    for ts, *xyz, acc in run[1:-1]:
        f = (ts - first[0]) / span
        at = tuple(first[k] + f * (last[k] - first[k]) for k in (1, 2, 3))
        ends = max(first[4], last[4], ACC_FLOOR)
        if math.dist(at, xyz) > GATE_K * math.hypot(max(acc, ACC_FLOOR), ends):
            return False
    return True


def _walked(m: Motion) -> bool:
    """A walk from the anchor could have made every step of the run (it walked in,
    stood, walked on): multipath that jumps faster than a walk did not."""
    return _walk([_anchor(m), *m.run])


def _walk(fixes: list) -> bool:
    """A walk could have made every step from one fix (ts, x, y, z, acc) to the next."""
    for prev, step in itertools.pairwise(fixes):
        dt = step[0] - prev[0]
        if dt <= 0 or math.dist(prev[1:4], step[1:4]) > V_WALK * dt + _noise(step, prev):
            return False
    return True


def _walks_on(m: Motion) -> bool:
    """The run is the tag walking on: its last fix is farther from the anchor than
    multipath moves a fix (a standing tag's multipath run stays within MULTIPATH_M of
    it, then comes back), and a walk could have made every step of it, from the anchor,
    from the anchor before it (the anchor was a multipath fix on the tag's track: bench
    seed 16, T-007), or from the anchor to its second fix (its first was multipath: seed
    18, T-028). One fix alone does not show a walk: two at least, RUN_SPAN_S apart."""
    anchor, run = _anchor(m), m.run
    if run[-1][0] - run[0][0] < RUN_SPAN_S:
        return False  # fixes seconds apart: their noise hides whether they walked
    if math.dist(run[-1][1:4], anchor[1:4]) <= MULTIPATH_M + _noise(run[-1], anchor):
        return False
    starts = ((anchor, run), (m.back, run), (anchor, run[1:]))
    return any(a is not None and len(r) >= 2 and _walk([a, *r]) for a, r in starts)


def _went_on(m: Motion, end: tuple) -> bool:
    """The fix `end`, within reach, ends the displaced run as a walk from the anchor
    through the run would, and farther from the anchor than the run's first fix: the
    tag walked in and on (bench seed 6, T-004). Multipath over a standing tag ends
    with the fixes back where it stood."""
    anchor = _anchor(m)
    far = math.dist(m.run[0][1:4], anchor[1:4])
    return math.dist(end[1:4], anchor[1:4]) > far and _walk([anchor, *m.run, end])


def _anchor(m: Motion) -> tuple:
    return (m.ts, m.x, m.y, m.z, m.acc)


def _noise(a: tuple, b: tuple) -> float:
    """The gate of two fixes' error (ts, x, y, z, acc), each acc at least ACC_FLOOR."""
    return GATE_K * math.hypot(max(a[4], ACC_FLOOR), max(b[4], ACC_FLOOR))


def _explained(m: Motion) -> bool:
    """The run of displaced fixes is the tag's true motion, not multipath."""
    run = m.run
    first, last = run[0], run[-1]
    span = last[0] - first[0]
    if span >= PERSIST_S:
        return True  # longer than a multipath episode lasts
    if len(run) < 2 or span <= 0:
        return False
    travel = math.dist(first[1:4], last[1:4])
    noise = GATE_K * math.hypot(first[4], last[4])
    if travel < noise or (span < RUN_SPAN_S and travel < 4 * noise):
        return False  # too short or too slow to tell a velocity from the noise
    v = [(last[k] - first[k]) / span for k in (1, 2, 3)]
    if math.sqrt(sum(c * c for c in v)) > V_MAX:
        return False
    back = first[0] - m.ts  # the run traced back to the anchor's time
    start = tuple(first[k + 1] - v[k] * back for k in range(3))
    # tracing back amplifies the error of the run's ends; acc is often optimistic
    k = min(back / span, 2.0)
    a0, a1, am = (max(a, ACC_FLOOR) for a in (first[4], last[4], m.acc))
    err = GATE_K * math.hypot(a0 * (1 + k), a1 * k, am) + V_START * back
    return _dist(start, (m.x, m.y, m.z)) <= err


def _move(m: Motion, ts: float, xyz: tuple, acc: float, dt: float) -> None:
    m.back = (m.ts, m.x, m.y, m.z, m.acc)
    a = min(1.0, dt / SLOW_S)  # velocity smoothing: fast reports are noisier per second
    m.vx += a * ((xyz[0] - m.x) / dt - m.vx)
    m.vy += a * ((xyz[1] - m.y) / dt - m.vy)
    m.vz += a * ((xyz[2] - m.z) / dt - m.vz)
    m.ts, m.x, m.y, m.z, m.acc = ts, xyz[0], xyz[1], xyz[2], acc
    m.known += 1
    if m.run:
        m.run = []


def _hold(m: Motion) -> None:
    """An odd fix within the noise of the tag's track: no anchor either. Its large acc
    is what puts it within the noise; as the anchor it would carry that acc and its
    displacement into the judging of the next fixes (the next fix of the same multipath
    episode on its track). It still ends a displaced run; the usual accuracy follows it
    (TagState.usual learns from every fix), so a tag whose sky truly changed is not odd
    for long."""
    m.run = []


def _dist(a: tuple, b: tuple) -> float:
    return math.dist(a, b)


def _to_segment(p: tuple, a: tuple, b: tuple) -> float:
    ab = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    ap = (p[0] - a[0], p[1] - a[1], p[2] - a[2])
    den = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2]
    if den <= 0:
        return math.dist(p, a)
    t = max(0.0, min(1.0, (ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / den))
    return math.dist(p, (a[0] + t * ab[0], a[1] + t * ab[1], a[2] + t * ab[2]))
