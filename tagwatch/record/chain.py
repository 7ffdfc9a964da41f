"""Hash chains: appending entries to chains, and checking a chain's stored rows.

Pure functions over tuples; store.py does the reading and writing.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from tagwatch.record.canon import GENESIS, body_digest, canonical, entry_hash, entry_hash_v2
from tagwatch.record.db import Db
from tagwatch.record.model import Entry, Problem, RecordError, VerifyReport

# Columns of a stored entry, in this order, everywhere entries are read for checking.
ENTRY_COLUMNS = (
    "id, chain, seq, kind, tag, event_ts, alert_id, recorded_at, body, body_hash, hash_rule, "
    "prev_hash, hash"
)
# Columns written by append_rows, in the order of its tuples.
INSERT_COLUMNS = ENTRY_COLUMNS.removeprefix("id, ")
HASH_RULE = 2  # the rule every new entry is written with (canon.py)
PURGE_KIND = "purge"
_CONTENT = ("kind", "tag", "event_ts", "alert_id", "recorded_at", "body", "body_hash")
_HASHED = ("seq", "kind", "tag", "event_ts", "alert_id", "recorded_at")
# Column groups whose exchange between two rows we test, to name a swap "reordered".
_SWAPS: tuple[tuple[str, ...], ...] = (
    ("seq",),
    _CONTENT,
    *((name,) for name in _CONTENT),
)
_MAX_SUSPECTS = 256  # rows kept per chain for swap detection; beyond that, just "altered"


@dataclass
class StoredEntry:
    id: int
    chain: str
    seq: int
    kind: str
    tag: str | None
    event_ts: float | None
    alert_id: str | None
    recorded_at: float
    body: str | None  # None: purged (rule 2 fixes only)
    body_hash: str | None  # None under rule 1
    hash_rule: int
    prev_hash: str
    hash: str

    @property
    def purged(self) -> bool:
        return self.body is None

    def computed(self, **override: object) -> str:
        """The hash this entry's contents give under its rule; "" if they cannot match."""
        values = {name: getattr(self, name) for name in ("seq", *_CONTENT)}
        values.update(override)
        head = [values[name] for name in _HASHED]
        body, body_hash = values["body"], values["body_hash"]
        try:
            if self.hash_rule == 1:
                return entry_hash(self.prev_hash, self.chain, *head, body)  # type: ignore[arg-type]
            if self.hash_rule != HASH_RULE:
                return ""
            if body is not None and body_digest(body) != body_hash:  # type: ignore[arg-type]
                return ""  # a present body must be the one its body_hash names
            return entry_hash_v2(self.prev_hash, self.chain, *head, body_hash)  # type: ignore[arg-type]
        except (TypeError, AttributeError, ValueError):
            return ""  # a column rewritten to another type (SQLite allows it): no match


def _as_float(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise RecordError(f"{what}: not a finite number: {value!r}")
    return number


def append_rows(
    entries: Iterable[Entry], heads: dict[str, tuple[int, str]], recorded_at: float
) -> list[tuple]:
    """Rows to insert (see ENTRY_COLUMNS without id), advancing `heads` in place."""
    stamp = _as_float(recorded_at, "recorded_at")
    rows = []
    for entry in entries:
        try:
            body = canonical(entry.body, "body")
            event_ts = _as_float(entry.event_ts, "event_ts")
        except RecordError as exc:
            # named here, not beforehand for every entry: this loop runs once per fix
            raise RecordError(f"entry {entry.kind!r} on chain {entry.chain!r}: {exc}") from exc
        seq, prev = heads.get(entry.chain, (0, GENESIS))
        seq += 1
        body_hash = body_digest(body)
        digest = entry_hash_v2(
            prev,
            entry.chain,
            seq,
            entry.kind,
            entry.tag,
            event_ts,
            entry.alert_id,
            stamp,
            body_hash,
        )
        heads[entry.chain] = (seq, digest)
        rows.append(
            (
                entry.chain,
                seq,
                entry.kind,
                entry.tag,
                event_ts,
                entry.alert_id,
                stamp,
                body,
                body_hash,
                HASH_RULE,
                prev,
                digest,
            )
        )
    return rows


class ChainCheck:
    """Feed one chain's rows in seq order, then `finish` with its head."""

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.problems: list[Problem] = []
        self.prev: StoredEntry | None = None
        self.prev_bad = False
        self.suspects: list[StoredEntry] = []
        self.overflow: list[StoredEntry] = []
        self.purged = SeqRanges()  # entries found without a body
        self.claimed = SeqRanges()  # seqs that verified purge entries say they purged

    def _report(self, seq: int, what: str, detail: str) -> None:
        self.problems.append(Problem(self.chain, seq, what, detail))

    def feed(self, row: StoredEntry) -> None:
        expected = self.prev.seq + 1 if self.prev else 1
        if row.seq > expected:
            self._report(expected, "removed", f"seq {expected}..{row.seq - 1} missing")
        elif row.seq < expected:
            self._report(row.seq, "reordered", f"seq {row.seq} appears again after {expected - 1}")
        elif self.prev and row.id < self.prev.id:
            self._report(
                row.seq,
                "reordered",
                f"id {row.id} of seq {row.seq} comes before "
                f"id {self.prev.id} of seq {self.prev.seq}",
            )
        hash_ok = row.computed() == row.hash
        link = self.prev.hash if self.prev else GENESIS
        if not hash_ok:
            (self.suspects if len(self.suspects) < _MAX_SUSPECTS else self.overflow).append(row)
        elif row.prev_hash != link and row.seq == expected and not self.prev_bad:
            self._report(
                row.seq,
                "removed",
                f"prev_hash of seq {row.seq} does not link to "
                f"seq {row.seq - 1}: an entry was removed or rewritten",
            )
        if hash_ok:
            self._note_purge(row)
        self.prev, self.prev_bad = row, not hash_ok

    def _note_purge(self, row: StoredEntry) -> None:
        if row.purged:
            self.purged.add(row.seq, row.seq)
        elif row.kind == PURGE_KIND:
            for first, last in purge_claims(row.body or ""):
                self.claimed.add(first, last)

    def _unrecorded_purges(self) -> None:
        # The trigger lets any rule-2 fix body be set to NULL; only one that a purge entry
        # (itself in the chain) accounts for is a purge, any other is a removed body.
        claims = self.claimed.merged()
        starts = [first for first, _ in claims]
        for first, last in self.purged.merged():
            i = bisect.bisect_right(starts, first) - 1
            if i < 0 or claims[i][1] < last:
                self._report(
                    first,
                    "altered",
                    f"body of seq {first}..{last} is missing and no purge entry records "
                    "removing it",
                )

    def finish(self, head: tuple[int, str] | None) -> list[Problem]:
        self._name_swaps()
        self._unrecorded_purges()
        last_seq = self.prev.seq if self.prev else 0
        last_hash = self.prev.hash if self.prev else GENESIS
        if head is None:
            self._report(last_seq, "truncated", "chain has entries but no head row")
        elif head[0] > last_seq:
            self._report(
                last_seq + 1,
                "truncated",
                f"head says seq {head[0]}, the last entry is seq {last_seq}",
            )
        elif head[0] < last_seq:
            self._report(head[0] + 1, "altered", f"entries past the head seq {head[0]}")
        elif head[1] != last_hash:
            self._report(last_seq, "altered", "head hash differs from the last entry's hash")
        return sorted(set(self.problems), key=lambda p: (p.seq, p.what))

    def _name_swaps(self) -> None:
        swapped: dict[int, str] = {}
        for a, b in itertools.combinations(self.suspects, 2):
            if a.seq in swapped or b.seq in swapped:
                continue
            for names in _SWAPS:
                if _swap_fits(a, b, names):
                    text = f"seq {a.seq} and seq {b.seq} exchanged {'+'.join(names)}"
                    swapped[a.seq] = swapped[b.seq] = text
                    break
        for row in [*self.suspects, *self.overflow]:
            if row.seq in swapped:
                self._report(row.seq, "reordered", swapped[row.seq])
            else:
                self._report(
                    row.seq, "altered", f"hash of seq {row.seq} does not match its contents"
                )


def _swap_fits(a: StoredEntry, b: StoredEntry, names: tuple[str, ...]) -> bool:
    a_gets = {name: getattr(b, name) for name in names}
    b_gets = {name: getattr(a, name) for name in names}
    return a.computed(**a_gets) == a.hash and b.computed(**b_gets) == b.hash


class SeqRanges:
    """Inclusive seq ranges, added in any order; kept compact when added in order."""

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def add(self, first: int, last: int) -> None:
        if self.ranges and self.ranges[-1][1] + 1 == first:
            self.ranges[-1][1] = last
        else:
            self.ranges.append([first, last])

    def merged(self) -> list[tuple[int, int]]:
        out: list[list[int]] = []
        for first, last in sorted(self.ranges):
            if out and first <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], last)
            else:
                out.append([first, last])
        return [(a, b) for a, b in out]

    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.ranges)


def purge_claims(body_json: str) -> list[tuple[int, int]]:
    """The seq ranges a purge entry's body says it purged (none if it is malformed)."""
    try:
        ranges = json.loads(body_json).get("ranges", [])
        return [(int(a), int(b)) for a, b in ranges if int(a) <= int(b)]
    except (ValueError, TypeError, AttributeError):
        return []


def verify_chains(db: Db, chain: str | None) -> list[Problem]:
    """Check every chain (or one) from one snapshot; callers open the transaction."""
    return verify_report(db, chain).problems


def verify_report(db: Db, chain: str | None) -> VerifyReport:
    """Problems and purged-entry counts of every chain (or one), from one snapshot."""
    where, params = ("WHERE chain = ?", (chain,)) if chain is not None else ("", ())
    heads = {
        c: (s, h)
        for c, s, h in db.query(f"SELECT chain, seq, hash FROM chain_heads {where}", params)
    }
    problems: list[Problem] = []
    purged: dict[str, int] = {}
    check: ChainCheck | None = None

    def done(check: ChainCheck) -> None:
        problems.extend(check.finish(heads.pop(check.chain, None)))
        if check.purged.ranges:
            purged[check.chain] = check.purged.count()

    for row in db.stream(
        f"SELECT {ENTRY_COLUMNS} FROM entries {where} ORDER BY chain, seq, id", params
    ):
        entry = StoredEntry(*row)
        if check is None or check.chain != entry.chain:
            if check is not None:
                done(check)
            check = ChainCheck(entry.chain)
        check.feed(entry)
    if check is not None:
        done(check)
    for name, (seq, _hash) in sorted(heads.items()):
        if seq > 0:
            problems.append(Problem(name, 1, "truncated", f"head says seq {seq}, no entries"))
    return VerifyReport(problems, purged)
