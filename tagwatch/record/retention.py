"""Data retention: purge old fix bodies, keep alert evidence, record the purge in the chain.

A purge sets the body of rule-2 fix entries to NULL (their body_hash stays, so every hash
and link still verifies, see canon.py) and appends one "purge" entry to the chain in the
same transaction, naming the seq ranges it emptied; `verify` treats a missing body that no
purge entry accounts for as altered.

Evidence window: a fix is kept when its event_ts lies within keep_window_s of the life of
any alert on the same chain (the case's chain holds both its fixes and its alerts), from
the alert's first to its last alert entry. Spanning the alert's whole life, not only each
alert entry's instant, keeps the track of a breach that lasted longer than twice the window.
"""

from __future__ import annotations

import bisect
import math

from tagwatch.record import chain as chains
from tagwatch.record.canon import GENESIS
from tagwatch.record.db import Db
from tagwatch.record.model import ChainPurge, Entry, RecordError

_CANDIDATES = (
    "SELECT seq, event_ts, hash_rule FROM entries WHERE chain = ? AND kind = 'fix' "
    "AND body IS NOT NULL AND event_ts < ? ORDER BY seq"
)
_ALERT_LIVES = (
    "SELECT min(event_ts), max(event_ts) FROM entries WHERE chain = ? AND kind = 'alert' "
    "AND event_ts IS NOT NULL GROUP BY alert_id"
)
_PURGE_RANGE = (
    "UPDATE entries SET body = NULL WHERE chain = ? AND seq BETWEEN ? AND ? "
    "AND kind = 'fix' AND hash_rule = 2 AND body IS NOT NULL AND event_ts < ?"
)

_FORGET_PLACES = (
    "UPDATE fix_places SET lat = NULL, lon = NULL, cell = NULL WHERE chain = ? "
    "AND seq BETWEEN ? AND ? AND event_ts < ?"
)


def check_args(older_than: float, keep_window_s: float, now: float) -> None:
    for name, value in (("older_than", older_than), ("keep_window_s", keep_window_s), ("now", now)):
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise RecordError(f"purge: {name}: not a finite number: {value!r}")
    if keep_window_s < 0:
        raise RecordError(f"purge: keep_window_s: must be >= 0, not {keep_window_s!r}")
    if older_than > now:
        raise RecordError(f"purge: older_than {older_than!r} is after now {now!r}")


def chains_with_candidates(db: Db, older_than: float) -> list[str]:
    rows = db.query(
        "SELECT DISTINCT chain FROM entries WHERE kind = 'fix' AND body IS NOT NULL "
        "AND event_ts < ? ORDER BY chain",
        (older_than,),
    )
    return [chain for (chain,) in rows]


def _windows(db: Db, chain: str, keep_window_s: float) -> tuple[list[float], list[float]]:
    """Merged [start, end] evidence intervals of the chain, as sorted starts and ends."""
    lives = sorted(
        (first - keep_window_s, last + keep_window_s)
        for first, last in db.query(_ALERT_LIVES, (chain,))
    )
    starts: list[float] = []
    ends: list[float] = []
    for start, end in lives:
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _in_window(ts: float, starts: list[float], ends: list[float]) -> bool:
    i = bisect.bisect_right(starts, ts) - 1
    return i >= 0 and ts <= ends[i]


def purge_chain(
    db: Db, chain: str, older_than: float, keep_window_s: float, now: float
) -> ChainPurge:
    """Purge one chain inside the caller's write transaction."""
    heads = db.lock_heads([chain], GENESIS)  # no fix joins the chain meanwhile
    starts, ends = _windows(db, chain, keep_window_s)
    ranges = chains.SeqRanges()
    kept = legacy = chosen = 0
    breaks = True  # a kept or legacy fix between two purged ones splits their range
    for seq, event_ts, rule in db.query(_CANDIDATES, (chain, older_than)):
        if rule != chains.HASH_RULE:
            legacy, breaks = legacy + 1, True
        elif _in_window(event_ts, starts, ends):
            kept, breaks = kept + 1, True
        elif breaks:
            ranges.ranges.append([seq, seq])
            chosen, breaks = chosen + 1, False
        else:
            ranges.ranges[-1][1] = seq
            chosen += 1
    count = sum(_purge_range(db, chain, first, last, older_than) for first, last in ranges.ranges)
    if count != chosen:  # rolls the whole chain's purge back
        raise RecordError(
            f"{db.label}: purge of chain {chain!r}: {chosen} fixes chosen, {count} updated"
        )
    if not count:
        return ChainPurge(chain, 0, kept, legacy)
    first, last = ranges.ranges[0][0], ranges.ranges[-1][1]
    body = {
        "older_than": older_than,
        "keep_window_s": keep_window_s,
        "purged": count,
        "first_seq": first,
        "last_seq": last,
        "ranges": ranges.ranges,
    }
    rows = chains.append_rows([Entry(chain, chains.PURGE_KIND, body, event_ts=now)], heads, now)
    db.insert_rows("entries", chains.INSERT_COLUMNS, rows)
    seq, digest = heads[chain]
    db.execute("UPDATE chain_heads SET seq = ?, hash = ? WHERE chain = ?", (seq, digest, chain))
    return ChainPurge(chain, count, kept, legacy, first, last, seq)


def _purge_range(db: Db, chain: str, first: int, last: int, older_than: float) -> int:
    # Only the fixes chosen lie in [first, last] under these conditions: the head lock
    # keeps writers out, and kept fixes split ranges. Other kinds in between are untouched.
    # Their places (near.py's index) go with their bodies: an UPDATE, the app role deletes
    # nothing.
    db.execute(_FORGET_PLACES, (chain, first, last, older_than))
    return db.execute(_PURGE_RANGE, (chain, first, last, older_than))
