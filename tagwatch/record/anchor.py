"""Chain heads anchored outside the database: signed checkpoints, and checking against them.

Why: every entry's hash links to the one before, so the chains detect any change made by
someone who cannot write the database. Someone who can (the database role, an owner or
superuser) could rewrite an entry, re-hash the rest of its chain and set `chain_heads` to
match: the chain is then consistent again. An anchor is the head of every chain, signed
with a key the database never holds, written where the database role cannot write: a
rewrite of anything anchored no longer matches its anchor.

The anchor file (`[record] anchor_path`) is append-only JSON lines, one checkpoint each:

    {"v": 1, "n": 7, "t": 1764324930.5, "kid": "<16 hex>", "prev": "<mac of line n-1>",
     "heads": {"case:C-0001": [412, "<entry hash>"], ...}, "mac": "<hex>"}

mac = hex HMAC-SHA256(key, canonical JSON of the line without "mac") (sorted keys, no
spaces, UTF-8). `heads` holds the chains whose head moved since the previous checkpoint
of this daemon run (all of them in a run's first checkpoint); `prev` chains the lines, so
a line removed from or inserted into the middle of the file is found. `kid` names the key
(a SHA-256 prefix of it; it reveals nothing of the key).

Checking (`check`): for each chain, the latest anchored (seq, hash) must be the stored
entry at that seq. Together with the chain's own links (chain.py) that proves every entry
up to there is what was anchored. A mismatch is narrowed with the chain's earlier anchors
to the seq range in which the rewrite lies. Entries written after a chain's latest anchor
(at most anchor_interval_s, or since the last clean stop) are reported as not covered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tagwatch.record.db import Db
from tagwatch.record.model import Problem, RecordError

KEY_ENV = "TAGWATCH_ANCHOR_KEY"
KEY_FILE_ENV = "TAGWATCH_ANCHOR_KEY_FILE"
KEY_ENV_NAMES = (KEY_ENV, KEY_FILE_ENV)
MIN_KEY_BYTES = 32
VERSION = 1


class AnchorError(RecordError):
    """The anchor key or file cannot be used (missing, unreadable, too short)."""


def load_key(environ: Mapping[str, str]) -> bytes | None:
    """The anchor key from TAGWATCH_ANCHOR_KEY or the file TAGWATCH_ANCHOR_KEY_FILE names;
    None when neither is set."""
    text = environ.get(KEY_ENV, "")
    source = KEY_ENV
    path = environ.get(KEY_FILE_ENV, "")
    if text and path:
        raise AnchorError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both")
    if path:
        source = path
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AnchorError(f"{KEY_FILE_ENV} {path}: cannot read the anchor key: {exc}") from None
    if not text:
        return None
    key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise AnchorError(
            f"{source}: the anchor key must be at least {MIN_KEY_BYTES} bytes "
            "(e.g. openssl rand -hex 32)"
        )
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"tagwatch-anchor-kid:" + key).hexdigest()[:16]


def _canonical(line: dict) -> bytes:
    return json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(key: bytes, line: dict) -> str:
    body = {k: v for k, v in line.items() if k != "mac"}
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def read_heads(db: Db) -> dict[str, tuple[int, str]]:
    """Every chain's head, in the caller's transaction."""
    return {c: (int(s), h) for c, s, h in db.query("SELECT chain, seq, hash FROM chain_heads")}


# --------------------------------------------------------------------------- writing


def _last_line(path: Path) -> tuple[dict | None, bool]:
    """The last complete line of the file (parsed; None if none), and whether the file
    ends without a newline (a write cut short)."""
    try:
        fp = path.open("rb")
    except FileNotFoundError:
        return None, False
    with fp:
        size = fp.seek(0, os.SEEK_END)
        if size == 0:
            return None, False
        fp.seek(size - 1)
        cut = fp.read(1) != b"\n"
        tail, pos = b"", size
        while pos > 0:
            step = min(1 << 20, pos)
            pos -= step
            fp.seek(pos)
            tail = fp.read(step) + tail
            parts = tail.split(b"\n")
            complete = parts[:-1]  # each was followed by a newline; the rest is cut
            if pos > 0:
                complete = complete[1:]  # may start mid-line
            for raw in reversed(complete):
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict):
                    return line, cut
        return None, cut


class AnchorWriter:
    """Appends signed checkpoints of the chain heads to the anchor file."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = Path(path)
        self.key = key
        self.kid = key_id(key)
        self.anchored: dict[str, tuple[int, str]] = {}  # what this run has anchored
        self._lock = threading.Lock()
        last, self._cut = _last_line(self.path)
        self.n = int(last.get("n", 0)) if isinstance(last, dict) else 0
        self.prev = str(last.get("mac", "")) if isinstance(last, dict) else ""

    def checkpoint(self, heads: dict[str, tuple[int, str]], now: float) -> dict | None:
        """Append a checkpoint of the heads that moved since the last one (all, the first
        time); returns the line written, or None if nothing moved."""
        with self._lock:
            moved = {c: h for c, h in sorted(heads.items()) if self.anchored.get(c) != h}
            if not moved:
                return None
            line = {
                "v": VERSION,
                "n": self.n + 1,
                "t": float(now),
                "kid": self.kid,
                "prev": self.prev,
                "heads": {c: [seq, digest] for c, (seq, digest) in moved.items()},
            }
            line["mac"] = _mac(self.key, line)
            data = _canonical(line) + b"\n"
            if self._cut:
                data = b"\n" + data  # end the cut line; check() skips it
            self._append(data)
            self._cut = False
            self.n, self.prev = line["n"], line["mac"]
            self.anchored.update(moved)
            return line

    def _append(self, data: bytes) -> None:
        new = not self.path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, flags, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            raise AnchorError(f"anchor file {self.path}: cannot append: {exc.strerror}") from None


def anchor_once(writer: AnchorWriter, read: Callable[[Callable[[Db], object]], object],
                now: float) -> dict | None:
    """Read every head (one short read transaction) and append a checkpoint."""
    heads = read(read_heads)
    return writer.checkpoint(heads, now)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- checking


@dataclass
class Anchor:
    line: int
    t: float
    seq: int
    hash: str


@dataclass
class AnchorReport:
    """What checking against the anchors found.

    problems: a chain entry that differs from its anchor, an anchored chain or entry that
    is gone, an anchor file line whose signature or link fails. notes: what the anchors do
    not prove (entries after a chain's latest anchor, chains never anchored, unreadable
    lines of an interrupted write)."""

    checkpoints: int = 0
    last_t: float | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as fp:
            yield from enumerate(fp, 1)
    except FileNotFoundError:
        raise AnchorError(f"anchor file {path}: no such file") from None
    except OSError as exc:
        raise AnchorError(f"anchor file {path}: cannot read: {exc.strerror}") from None


def read_anchors(
    path: Path, key: bytes, report: AnchorReport, chains: set[str] | None = None
) -> dict[str, list[Anchor]]:
    """Every signed anchor of the file (of `chains` only, if given; else only each chain's
    latest), checking each line's signature and its link to the line before."""
    where = f"anchor file {path}"
    out: dict[str, list[Anchor]] = {}
    prev: str | None = None
    kid = key_id(key)
    for number, raw in _lines(path):
        text = raw.strip()
        if not text:
            continue
        try:
            line = json.loads(text)
            ok = isinstance(line, dict) and hmac.compare_digest(
                str(line.get("mac", "")), _mac(key, line)
            )
        except (ValueError, TypeError):
            line, ok = None, False
        if line is None or not raw.endswith(b"\n"):
            report.notes.append(f"{where}: line {number} unreadable (a write cut short?)")
            continue
        if not ok:
            other = isinstance(line, dict) and line.get("kid") not in (None, kid)
            report.problems.append(
                Problem(
                    "anchors",
                    number,
                    "altered",
                    f"{where}: line {number}: "
                    + ("signed with another key" if other else "signature does not match"),
                )
            )
            continue
        if prev is not None and line.get("prev") != prev:
            report.problems.append(
                Problem(
                    "anchors",
                    number,
                    "removed",
                    f"{where}: line {number} does not follow the signed line before it: "
                    "checkpoints were removed or inserted",
                )
            )
        prev = line["mac"]
        report.checkpoints += 1
        t = float(line.get("t", 0.0))
        report.last_t = t
        for chain, (seq, digest) in line.get("heads", {}).items():
            if chains is not None and chain not in chains:
                continue
            anchor = Anchor(number, t, int(seq), str(digest))
            if chains is None:
                out[chain] = [anchor]
            else:
                out.setdefault(chain, []).append(anchor)
    return out


def check(db: Db, path: Path, key: bytes, chain: str | None = None) -> AnchorReport:
    """Check the record's chains (or one) against the anchor file, in the caller's
    read transaction. chain.py's verify checks each chain's own links beside this."""
    report = AnchorReport()
    latest = read_anchors(path, key, report)
    if chain is not None:
        latest = {c: a for c, a in latest.items() if c == chain}
    where, params = ("WHERE chain = ?", (chain,)) if chain is not None else ("", ())
    last_seq = {
        c: int(s)
        for c, s in db.query(f"SELECT chain, max(seq) FROM entries {where} GROUP BY chain", params)
    }
    mismatched: dict[str, Anchor] = {}
    for name, [anchor] in sorted(latest.items()):
        stored = _hash_at(db, name, anchor.seq)
        top = last_seq.get(name, 0)
        if stored is None:
            gone = "the chain has no entries" if top == 0 else f"the last entry is seq {top}"
            report.problems.append(
                Problem(
                    name,
                    top + 1,
                    "removed",
                    f"anchored at seq {anchor.seq} ({_when(anchor.t)}), but {gone}: "
                    f"seq {top + 1}..{anchor.seq} removed",
                )
            )
        elif stored != anchor.hash:
            mismatched[name] = anchor
        elif top > anchor.seq:
            report.notes.append(
                f"{name}: seq {anchor.seq + 1}..{top} written after its latest anchor "
                f"({_when(anchor.t)}): not covered"
            )
    if mismatched:
        every = read_anchors(path, key, AnchorReport(), set(mismatched))
        for name, anchor in sorted(mismatched.items()):
            report.problems.append(_narrow(db, name, every.get(name, [anchor])))
    for name in sorted(set(last_seq) - set(latest)):
        report.notes.append(f"{name}: seq 1..{last_seq[name]}: no anchor covers this chain")
    if report.checkpoints == 0:
        report.notes.append(f"anchor file {path}: no signed checkpoint in it")
    report.problems.sort(key=lambda p: (p.chain, p.seq, p.what))
    return report


def _hash_at(db: Db, chain: str, seq: int) -> str | None:
    rows = db.query("SELECT hash FROM entries WHERE chain = ? AND seq = ?", (chain, seq))
    return str(rows[0][0]) if rows else None


def _narrow(db: Db, chain: str, anchors: list[Anchor]) -> Problem:
    """The seq range a rewrite lies in: after the last anchor that still matches, up to
    the first that does not (anchors of one chain only grow in seq)."""
    anchors = sorted(anchors, key=lambda a: a.seq)
    good = 0
    bad = anchors[-1]
    for anchor in anchors:
        stored = _hash_at(db, chain, anchor.seq)
        if stored == anchor.hash:
            good = anchor.seq
        else:
            bad = anchor
            break
    stored = _hash_at(db, chain, bad.seq) or "none"
    first = good + 1
    span = f"seq {first}" if first == bad.seq else f"seq {first}..{bad.seq}"
    return Problem(
        chain,
        first,
        "rewritten",
        f"{span}: an entry was changed, removed or reordered and the chain re-hashed "
        f"after it: seq {bad.seq} was anchored with hash {bad.hash[:16]}... at "
        f"{_when(bad.t)} (anchor file line {bad.line}), the record has {stored[:16]}..."
        + (f"; seq {good} still matches its anchor" if good else ""),
    )

