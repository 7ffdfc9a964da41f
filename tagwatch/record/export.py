"""The evidence bundle for one case and time range.

Files: fixes.geojson, alerts.jsonl, chain.jsonl, manifest.json (with each file's SHA-256).
An entry's time is its event_ts, or recorded_at where it has none. chain.jsonl holds every
entry from the first to the last in range by seq, so each prev_hash link in it can be
checked, and each line carries all the hashed fields, so anyone can recompute the hashes
(see canon.py for the definition, and each line's hash_rule) without tagwatch.
A purged fix (DESIGN: data retention) stays in the bundle as a feature with geometry null
and properties {"purged": true, "record_seq", "tag", "ts"}, and in chain.jsonl with body
null; the manifest counts them. Its body_hash still lets its hash and links be checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from tagwatch.record.canon import GENESIS
from tagwatch.record.chain import ENTRY_COLUMNS, StoredEntry, verify_report
from tagwatch.record.db import Db
from tagwatch.record.model import RecordError


class ExportRefused(RecordError):
    """Bad input for an export: an unknown case, a reversed time range, an output folder
    that exists and is not empty (without force) or is a symbolic link."""

_IN_RANGE = "chain = ? AND COALESCE(event_ts, recorded_at) BETWEEN ? AND ?"


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _fix_feature(body: dict) -> dict:
    lat, lon = body.get("lat"), body.get("lon")
    has_point = isinstance(lat, int | float) and isinstance(lon, int | float)
    geometry = {"type": "Point", "coordinates": [lon, lat]} if has_point else None
    return {"type": "Feature", "geometry": geometry, "properties": body}


def _purged_feature(seq: int, tag: str | None, event_ts: float) -> dict:
    properties = {"purged": True, "record_seq": seq, "tag": tag, "ts": event_ts}
    return {"type": "Feature", "geometry": None, "properties": properties}


def _fixes(db: Db, chain: str, since: float, until: float) -> tuple[str, int]:
    """The GeoJSON text, and how many of its features are purged fixes."""
    rows = db.query(
        "SELECT seq, tag, event_ts, body FROM entries WHERE chain = ? AND kind = 'fix' "
        "AND event_ts BETWEEN ? AND ? ORDER BY event_ts, seq",
        (chain, since, until),
    )
    features = [
        _purged_feature(seq, tag, ts) if body is None else _fix_feature(json.loads(body))
        for seq, tag, ts, body in rows
    ]
    text = json.dumps(
        {"type": "FeatureCollection", "features": features}, ensure_ascii=False, indent=1
    )
    return text + "\n", sum(1 for row in rows if row[3] is None)


def _alerts(db: Db, chain: str, since: float, until: float) -> str:
    rows = db.query(
        f"SELECT body FROM entries WHERE {_IN_RANGE} AND kind = 'alert' ORDER BY seq",
        (chain, since, until),
    )
    return "".join(body + "\n" for (body,) in rows)


def _chain(db: Db, chain: str, since: float, until: float) -> tuple[str, dict]:
    first, last = db.query(
        f"SELECT min(seq), max(seq) FROM entries WHERE {_IN_RANGE}", (chain, since, until)
    )[0]
    rows = (
        []
        if first is None
        else db.query(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE chain = ? AND seq BETWEEN ? AND ? "
            "ORDER BY seq",
            (chain, first, last),
        )
    )
    lines = []
    for row in rows:
        entry = StoredEntry(*row)
        record = {
            name: getattr(entry, name)
            for name in (
                "chain",
                "seq",
                "kind",
                "tag",
                "event_ts",
                "alert_id",
                "recorded_at",
                "body",
                "body_hash",
                "hash_rule",
                "prev_hash",
                "hash",
            )
        }
        lines.append(_dumps(record) + "\n")  # body stays the exact hashed text
    found = db.query("SELECT seq, hash FROM chain_heads WHERE chain = ?", (chain,))
    seq, digest = found[0] if found else (0, GENESIS)
    head = {"chain": chain, "seq": seq, "hash": digest}
    lines.append(_dumps({"head": head}) + "\n")
    return "".join(lines), head


def write_bundle(
    db: Db, case_id: str, since: float, until: float, out_dir: Path, force: bool = False
) -> Path:
    """Write the bundle from the caller's snapshot transaction; returns out_dir.

    Refused (ExportRefused): since after until, a case the record has no chain for, an
    out_dir that is a symbolic link, or an existing non-empty out_dir unless force. Files
    are written 0600 in a folder created 0700, never through a symbolic link.
    """
    chain = f"case:{case_id}"
    if since > until:
        raise ExportRefused(f"since {_rfc3339(since)} is after until {_rfc3339(until)}")
    if not db.query("SELECT 1 FROM chain_heads WHERE chain = ?", (chain,)):
        raise ExportRefused(f"{db.label}: case {case_id!r}: not in the record")
    dir_fd = _open_out_dir(out_dir, force)
    try:
        chain_text, head = _chain(db, chain, since, until)
        fixes_text, purged = _fixes(db, chain, since, until)
        files = {
            "fixes.geojson": fixes_text,
            "alerts.jsonl": _alerts(db, chain, since, until),
            "chain.jsonl": chain_text,
        }
        sums = {}
        for name, text in files.items():
            data = text.encode("utf-8")
            _write(dir_fd, name, data, out_dir)
            sums[name] = hashlib.sha256(data).hexdigest()
        manifest = _manifest(db, case_id, chain, since, until, head, sums, purged)
        _write(dir_fd, "manifest.json", manifest.encode("utf-8"), out_dir)
    finally:
        os.close(dir_fd)
    return out_dir


def _open_out_dir(out_dir: Path, force: bool) -> int:
    """The output folder, opened without following a symbolic link (created 0700)."""
    try:
        info = os.lstat(out_dir)
    except FileNotFoundError:
        _make_dirs(out_dir)
    else:
        if stat.S_ISLNK(info.st_mode):
            raise ExportRefused(f"{out_dir}: is a symbolic link; give the real folder")
        if not stat.S_ISDIR(info.st_mode):
            raise ExportRefused(f"{out_dir}: exists and is not a folder")
        if any(os.scandir(out_dir)) and not force:
            raise ExportRefused(
                f"{out_dir}: exists and is not empty; give a new folder, or --force to "
                "replace the bundle files in it"
            )
    try:
        return os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ExportRefused(f"{out_dir}: cannot open: {exc.strerror}") from None


def _make_dirs(path: Path) -> None:
    missing = []
    while not path.exists() and not path.is_symlink():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except OSError as exc:
            raise ExportRefused(f"{folder}: cannot create: {exc.strerror}") from None


def _write(dir_fd: int, name: str, data: bytes, out_dir: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise ExportRefused(f"{out_dir / name}: cannot write: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # a file replaced under --force keeps no wider mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _manifest(
    db: Db,
    case_id: str,
    chain: str,
    since: float,
    until: float,
    head: dict,
    sums: dict,
    purged: int,
) -> str:
    report = verify_report(db, chain)
    manifest = {
        "case": case_id,
        "chain": chain,
        "since": since,
        "until": until,
        "since_rfc3339": _rfc3339(since),
        "until_rfc3339": _rfc3339(until),
        "generated": _rfc3339(datetime.now(UTC).timestamp()),
        "head": head,
        "sha256": sums,
        "verify": [{"seq": p.seq, "what": p.what, "detail": p.detail} for p in report.problems],
        "purged": {"fixes_in_range": purged, "chain": report.purged.get(chain, 0)},
        "hash_rule": {
            "1": "sha256(prev_hash hex || canonical JSON of [chain, seq, kind, tag, "
            "event_ts, alert_id, recorded_at, body]); body as stored",
            "2": "sha256(prev_hash hex || canonical JSON of [chain, seq, kind, tag, "
            "event_ts, alert_id, recorded_at, body_hash]); body_hash = sha256 hex of the "
            "body as stored; a purged body is null",
            "canonical_json": "sorted keys, no spaces, UTF-8",
        },
    }
    return json.dumps(manifest, ensure_ascii=False, indent=1) + "\n"
