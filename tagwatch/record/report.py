"""The court report of one alert (DESIGN 3.5 `tagwatch record report`): a PDF.

Pages: (1) what happened: the alert's records and the operator actions and delivery
reports about it, in order, with times in the case's time zone and what each means in
plain words; (2) the map: the tag's fixes around the alert with their accuracy circles,
the zone and its warning ring, a scale bar and a north arrow; (3) the proof: each entry's
chain, seq and hash, the chain's check, the anchor the entries verify against (or why
there is none), and how anyone can verify it.

Redacted (the default): a victim's address can be secret from the defence, so the report
holds no coordinate, no basemap, no zone name (zones are Z1, Z2...: an operator may name
a zone after its street), no phone number, no operator note (free text). The map is drawn
in a local metric frame: metres east and north of an origin that the report does not give.
Unredacted (police use only) adds the origin and every fix's latitude and longitude, the
zone names and the notes. There is no basemap in either: the report is made offline; a
basemap from a configured tile server is left for later.

matplotlib draws every page (its PDF backend, TrueType fonts so the text can be searched
and extracted); nothing here writes PDF by hand.
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from tagwatch.record.chain import verify_report
from tagwatch.record.db import Db
from tagwatch.record.model import RecordError

AROUND_S = 900.0  # fixes shown before the alert's first record and after its last
MAX_FIXES = 400
PAGE = (8.27, 11.69)  # A4 portrait, inches
MONO = "DejaVu Sans Mono"
_PHONE = re.compile(r"\+?\d[\d ()-]{6,}\d")
_COORD = re.compile(r"-?\d{1,3}\.\d{3,}")

TYPES = {
    "zone.breach": "the tag was inside an exclusion zone while it was in force",
    "zone.warning": "the tag came within the warning distance of an exclusion zone",
    "zone.exit": "the tag left the exclusion zone after a breach",
    "zone.late_breach": "a fix that arrived late shows an earlier breach of an exclusion zone",
    "approach": "the tag was closing on a zone or the victim fast enough to arrive soon",
    "proximity": "the tag was within the protected distance of the victim's own device",
    "curfew.breach": "the tag was outside the place it must stay in during the curfew",
    "tag.tamper": "the tag reported that its strap was opened or lost body contact",
    "tag.battery_low": "the tag's battery was low",
    "tag.no_fix": "the tag sent messages but no position",
    "tag.no_comms": "nothing arrived from the tag",
    "tag.jump": "the tag's position jumped faster than a person can travel (fault or spoofing)",
    "pattern.loitering": "the tag stayed near an exclusion zone for a long time",
    "pattern.repeated_approach": "the tag came near the protected places repeatedly",
    "pattern.following": "the tag moved along with the victim's device",
    "delivery.failed": "a message to the victim or the police could not be delivered",
    "protection.degraded": "the protection the order promises was reduced",
    "protection.restored": "the protection was whole again",
}
STATES = {
    "open": "tagwatch raised the alert",
    "updated": "the alert's evidence changed",
    "acknowledged": "an operator acknowledged the alert",
    "escalated": "nobody acknowledged in time: the alert was escalated",
    "resolved": "the alert ended",
}
CONFIDENCE = {
    "probable": "probable: one piece of evidence, not yet confirmed",
    "confirmed": "confirmed: the fixes add up to a breach beyond their measurement error",
}


class ReportRefused(RecordError):
    """No such alert, or an alert whose case is not loaded."""


@dataclass
class Anchoring:
    """What the anchors say about the report's entries (None fields: not configured)."""

    configured: bool
    text: list[str] = field(default_factory=list)


@dataclass
class ReportData:
    alert_id: str
    case: object  # zones.Case
    history: list[dict]  # alert_history entries
    fixes: list[dict]  # fix bodies, by ts
    chain_ok: list[str]  # problems of the chain ([] intact)
    head: tuple[int, str]
    anchoring: Anchoring
    unredacted: bool


def gather(db: Db, alert_id: str, case_for, anchors) -> ReportData:
    """Everything the report shows, from one read transaction. case_for(case id) -> the
    loaded Case or None; anchors(db, chain, seqs) -> Anchoring."""
    from tagwatch.record.chain import ENTRY_COLUMNS, StoredEntry
    from tagwatch.record.store import _entry_dict

    rows = db.query(
        f"SELECT {ENTRY_COLUMNS} FROM entries WHERE alert_id = ? ORDER BY id", (alert_id,)
    )
    history = [_entry_dict(StoredEntry(*row)) for row in rows]
    alerts = [e for e in history if e["kind"] == "alert"]
    if not alerts:
        raise ReportRefused(f"alert {alert_id!r}: no such alert in the record")
    first = alerts[0]["body"]
    case = case_for(first["case"])
    if case is None:
        raise ReportRefused(
            f"alert {alert_id}: its case {first['case']!r} is not among the loaded case files "
            "([cases] path); the map needs its zones"
        )
    chain = alerts[0]["chain"]
    times = [e["event_ts"] for e in history if e["event_ts"] is not None]
    fix_rows = db.query(
        "SELECT body FROM entries WHERE chain = ? AND kind = 'fix' AND tag = ? "
        "AND event_ts BETWEEN ? AND ? AND body IS NOT NULL ORDER BY event_ts, seq LIMIT ?",
        (chain, first.get("tag"), min(times) - AROUND_S, max(times) + AROUND_S, MAX_FIXES),
    )
    fixes = [json.loads(body) for (body,) in fix_rows]
    fixes = [f for f in fixes if isinstance(f.get("lat"), int | float)]
    report = verify_report(db, chain)
    head = db.query("SELECT seq, hash FROM chain_heads WHERE chain = ?", (chain,))[0]
    return ReportData(
        alert_id,
        case,
        history,
        fixes,
        [f"seq {p.seq} {p.what}: {p.detail}" for p in report.problems],
        (int(head[0]), str(head[1])),
        anchors(db, chain, [e["seq"] for e in history]),
        False,
    )


def anchoring(path: Path | None, key: bytes | None):
    """anchors(db, chain, seqs) for gather: the first anchor covering the last entry."""
    from tagwatch.record import anchor

    def check(db: Db, chain: str, seqs: list[int]) -> Anchoring:
        if path is None or key is None:
            why = "no anchor file ([record] anchor_path)" if path is None else (
                f"no anchor key ({' or '.join(anchor.KEY_ENV_NAMES)})"
            )
            return Anchoring(False, [
                f"Not anchored: {why} is configured. The chain proves these entries were "
                "not changed by anyone who could not write the database; it cannot prove "
                "that against someone who could (docs/RECORD.md)."
            ])
        found = anchor.AnchorReport()
        try:
            lines = anchor.read_anchors(path, key, found, {chain}).get(chain, [])
        except anchor.AnchorError as exc:
            return Anchoring(True, [f"Not proven against anchors: {exc}. The chain alone "
                                    "proves these entries only against someone who could "
                                    "not write the database (docs/RECORD.md)."])
        last = max(seqs)
        covering = next((a for a in sorted(lines, key=lambda a: a.seq) if a.seq >= last), None)
        text = [f"Anchor file: {path} (key id {anchor.key_id(key)}), "
                f"{found.checkpoints} signed checkpoints."]
        if found.problems:
            text += [f"Anchor file problem: {p.detail}" for p in found.problems]
        if covering is None:
            text.append(f"No checkpoint covers seq {last} of {chain} yet: these entries are "
                        "proven by the chain only, until the next checkpoint.")
            return Anchoring(True, text)
        stored = db.query(
            "SELECT hash FROM entries WHERE chain = ? AND seq = ?", (chain, covering.seq)
        )
        ok = bool(stored) and stored[0][0] == covering.hash
        text += [
            f"Checkpoint at line {covering.line}, signed {_utc(covering.t)}: {chain} seq "
            f"{covering.seq} with hash",
            f"  {covering.hash}",
            "The record's entry at that seq has this hash now: "
            + ("it matches, so every entry up to it, these included, is as anchored."
               if ok else "IT DOES NOT MATCH: the record was changed after it was anchored."),
        ]
        return Anchoring(True, text)

    return check


# --------------------------------------------------------------------------- wording


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def local_time(ts: float, tz: ZoneInfo) -> str:
    moment = datetime.fromtimestamp(ts, tz)
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z (UTC%z)").replace("(UTC+0000)", "(UTC+00:00)")


def _ts(value: object) -> float | None:
    """Unix seconds of a record's RFC 3339 text or a fix body's number; None if neither."""
    from tagwatch.wire import parse_rfc3339

    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_rfc3339(str(value))
    except (ValueError, IndexError):
        return None


class Redactor:
    def __init__(self, case, unredacted: bool) -> None:
        self.unredacted = unredacted
        self.zones = {z.zone_id: f"Z{i}" for i, z in enumerate(case.zones, 1)}
        self.phones = [v.phone for v in case.victims if v.phone]

    def zone(self, name: str | None) -> str:
        if name is None:
            return "-"
        return name if self.unredacted else self.zones.get(name, "Z?")

    def text(self, text: str) -> str:
        for phone in self.phones:  # never, not even unredacted: not needed to read it
            text = text.replace(phone, "[phone]")
        text = _PHONE.sub("[number]", text)
        if self.unredacted:
            return text
        for name, label in sorted(self.zones.items(), key=lambda kv: -len(kv[0])):
            text = re.sub(rf"\b{re.escape(name)}\b", label, text)
        return _COORD.sub("[position]", text)


def describe(entry: dict, red: Redactor) -> str:
    """One entry in plain words."""
    body = entry["body"] or {}
    if entry["kind"] == "alert":
        what = TYPES.get(body.get("type"), str(body.get("type")))
        state = STATES.get(body.get("state"), str(body.get("state")))
        parts = [f"{state}: {what}"]
        if body.get("zone"):
            parts.append(f"zone {red.zone(body['zone'])}")
        if isinstance(body.get("distance_m"), int | float):
            d = body["distance_m"]
            parts.append(f"{abs(d):.0f} m {'inside' if d < 0 else 'outside'} the boundary")
        if body.get("confidence") in CONFIDENCE:
            parts.append(CONFIDENCE[body["confidence"]])
        if isinstance(body.get("acc"), int | float):
            parts.append(f"fix accuracy about {body['acc']:.0f} m")
        if body.get("escalation"):
            parts.append(f"escalation level {body['escalation']}")
        if body.get("detail"):
            parts.append(f'tagwatch said: "{red.text(str(body["detail"]))}"')
        return "; ".join(parts) + "."
    if entry["kind"] == "action":
        note = body.get("note") or ""
        said = (f' Note: "{red.text(note)}"' if red.unredacted else " (note withheld)") \
            if note else ""
        return f"{body.get('by', 'someone')} chose {body.get('action', 'an action')}.{said}"
    if entry["kind"] == "delivery":
        return (f"delivery report from the messaging provider: {body.get('status', '?')}"
                + (f" (error {body['error_code']})" if body.get("error_code") else "") + ".")
    return f"{entry['kind']} entry."


# --------------------------------------------------------------------------- the map


def _frame(data: ReportData):
    """Transformer lon/lat -> metres east/north of the origin, and the origin (lon, lat):
    the centre of the zone of the alert (else of the fixes)."""
    import shapely
    from pyproj import Transformer

    alert = data.history[0]["body"]
    zone = next((z for z in data.case.zones if z.zone_id == alert.get("zone")), None)
    if zone is not None:
        c = shapely.from_wkb(zone.drawn).centroid
        lon0, lat0 = c.x, c.y
    elif data.fixes:
        lon0 = float(np.mean([f["lon"] for f in data.fixes]))
        lat0 = float(np.mean([f["lat"] for f in data.fixes]))
    else:
        lon0, lat0 = 0.0, 0.0
    to_local = Transformer.from_crs(
        "EPSG:4326", f"+proj=aeqd +lat_0={lat0} +lon_0={lon0} +datum=WGS84 +units=m",
        always_xy=True,
    )
    return to_local, (lon0, lat0), zone


def _local_zone(zone, to_local, default_warn_m: float):
    import shapely

    def local(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(to_local.transform(xy[:, 0], xy[:, 1]))

    drawn = shapely.transform(shapely.from_wkb(zone.drawn), local)
    shape = drawn.buffer(zone.radius_m) if zone.radius_m else drawn
    warn = zone.warn_m if zone.warn_m is not None else default_warn_m
    return shape, shape.buffer(warn), warn


def draw_map(data: ReportData, red: Redactor, default_warn_m: float = 250.0):
    """The map figure: fixes with accuracy circles, the zone and its warning ring."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, FancyArrow
    from matplotlib.patches import Polygon as Patch
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    to_local, origin, zone = _frame(data)
    fig = plt.figure(figsize=PAGE)
    ax = fig.add_axes((0.1, 0.3, 0.8, 0.6))
    xs, ys = (np.array(v) for v in to_local.transform(
        [f["lon"] for f in data.fixes], [f["lat"] for f in data.fixes]))
    all_x, all_y = [*xs, 0.0], [*ys, 0.0]
    if zone is not None:
        shape, ring, warn = _local_zone(zone, to_local, default_warn_m)
        for poly, style in ((ring, dict(fill=False, ls="--", ec="#d08000", lw=1.2)),
                            (shape, dict(fc="#e0303040", ec="#c00000", lw=1.5))):
            for part in getattr(poly, "geoms", [poly]):
                ax.add_patch(Patch(np.asarray(part.exterior.coords), closed=True, **style))
        ax.plot([], [], ls="--", color="#d08000", label=f"warning ring ({warn:.0f} m)")
        ax.plot([], [], color="#c00000", lw=6, alpha=0.4,
                label=f"exclusion zone {red.zone(zone.zone_id)}")
        minx, miny, maxx, maxy = ring.bounds
        all_x += [minx, maxx]
        all_y += [miny, maxy]
    # records carry their fix's time to the millisecond (wire.rfc3339)
    alert_ts = {round(_ts(e["body"].get("ts")) or 0.0, 3) for e in data.history
                if e["kind"] == "alert"}
    ax.plot(xs, ys, "-", color="#3060c0", lw=0.8, alpha=0.6)
    for i, (x, y, f) in enumerate(zip(xs, ys, data.fixes, strict=True), 1):
        key = round(_ts(f.get("ts")) or 0.0, 3) in alert_ts
        acc = float(f.get("acc") or 15.0)
        ax.add_patch(Circle((x, y), acc, fc="#3060c018", ec="#3060c0", lw=0.5))
        ax.plot(x, y, "o", ms=5 if key else 3, color="#c00000" if key else "#203080")
        if len(xs) <= 40 or key:
            ax.annotate(str(i), (x, y), xytext=(3, 3), textcoords="offset points", size=7)
    ax.plot([], [], "o", color="#203080", label="tag fix (circle: its accuracy)")
    ax.plot([], [], "o", color="#c00000", label="fix of an alert record")
    pad = max(50.0, 0.08 * max(max(all_x) - min(all_x), max(all_y) - min(all_y)))
    ax.set_xlim(min(all_x) - pad, max(all_x) + pad)
    ax.set_ylim(min(all_y) - pad, max(all_y) + pad)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("metres east of the map's origin")
    ax.set_ylabel("metres north of the map's origin")
    ax.grid(True, lw=0.3, alpha=0.5)
    ax.legend(loc="lower left", fontsize=7, framealpha=0.9)
    width = ax.get_xlim()[1] - ax.get_xlim()[0]
    bar = _nice(width / 5)
    ax.add_artist(AnchoredSizeBar(ax.transData, bar, f"{bar:g} m", "lower right", pad=0.6,
                                  size_vertical=width / 250, frameon=True))
    ax.add_artist(FancyArrow(0.93, 0.82, 0, 0.1, width=0.012, transform=ax.transAxes,
                             color="black", length_includes_head=True, head_width=0.04,
                             head_length=0.035))
    ax.text(0.93, 0.94, "N", transform=ax.transAxes, ha="center", va="bottom",
            size=12, weight="bold")
    tz = ZoneInfo(data.case.timezone)
    title = f"Alert {data.alert_id}: the tag's fixes around it"
    fig.text(0.1, 0.95, title, size=12, weight="bold")
    notes = [
        f"{len(data.fixes)} fixes of tag {data.history[0]['body'].get('tag')} from "
        + (f"{local_time(_ts(data.fixes[0]['ts']) or 0, tz)} to "
           f"{local_time(_ts(data.fixes[-1]['ts']) or 0, tz)}" if data.fixes else "-")
        + f", {AROUND_S / 60:.0f} minutes either side of the alert's records.",
        "Each circle is the fix's reported accuracy (about 68% of fixes lie within it).",
        "North is up; the grid is in metres. No basemap: this report is made offline.",
    ]
    if red.unredacted:
        notes.append(f"Origin of the map: latitude {origin[1]:.6f}, longitude {origin[0]:.6f} "
                     "(WGS84). POLICE USE ONLY.")
    else:
        notes.append("Redacted: the map's origin is not given, so no place can be read from "
                     "it; the zone is shown by its shape only.")
    _lines(fig, notes, 0.25, size=8)
    return fig


def _nice(x: float) -> float:
    steps = (1, 2, 5)
    p = 10 ** np.floor(np.log10(max(x, 1.0)))
    return float(max(s * p for s in steps if s * p <= max(x, 1.0)))


# --------------------------------------------------------------------------- pages


def _lines(fig, lines: list[str], top: float, size: float = 9, family: str | None = None,
           width: int = 100) -> float:
    """Write wrapped lines from y=top down; returns the y below the last."""
    step = size / 11.69 / 72 * 1.45
    y = top
    for line in lines:
        for part in textwrap.wrap(line, width, subsequent_indent="    ") or [""]:
            fig.text(0.07, y, part, size=size, family=family)
            y -= step
    return y


class _Pages:
    """Text pages: lines written top down, a new page (its title "... continued") when
    one is full, so nothing is ever cut off."""

    BOTTOM = 0.05

    def __init__(self) -> None:
        self.figs: list = []
        self.title = ""
        self.y = 0.0

    def page(self, title: str, size: float = 12) -> None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=PAGE)
        fig.text(0.07, 0.95, title, size=size, weight="bold")
        self.figs.append(fig)
        self.title, self.y = title, 0.92

    def write(self, lines: list[str], size: float = 9, family: str | None = None,
              width: int = 100, color: str | None = None) -> None:
        step = size / 11.69 / 72 * 1.45
        for line in lines:
            for part in textwrap.wrap(line, width, subsequent_indent="    ") or [""]:
                if self.y < self.BOTTOM:
                    self.page(f"{self.title.removesuffix(' (continued)')} (continued)")
                self.figs[-1].text(0.07, self.y, part, size=size, family=family, color=color)
                self.y -= step


def _summary_pages(data: ReportData, red: Redactor, generated: float) -> list:
    tz = ZoneInfo(data.case.timezone)
    alert = data.history[0]["body"]
    last = [e for e in data.history if e["kind"] == "alert"][-1]["body"]
    doc = _Pages()
    doc.page("tagwatch: report of an alert", size=15)
    mark = "UNREDACTED: POLICE USE ONLY" if red.unredacted else (
        "Redacted: no coordinates, no addresses, no phone numbers, no zone names")
    doc.write([mark], size=9, color="#a00000" if red.unredacted else "#404040")
    doc.write([
        "",
        f"Reference: {data.alert_id}",
        f"Case: {alert.get('case')}    Tag: {alert.get('tag')}    "
        f"Victim: {alert.get('victim') or '-'}    Zone: {red.zone(alert.get('zone'))}",
        f"Alert type: {alert.get('type')}: {TYPES.get(alert.get('type'), '')}",
        f"Latest state: {last.get('state')}, severity {last.get('severity')}",
        f"Times are in the case's time zone, {data.case.timezone}.",
        f"Report generated {local_time(generated, tz)}.",
        "",
        "What the record holds about this alert, in order:",
    ], size=10)
    for n, entry in enumerate(data.history, 1):
        body = entry["body"] or {}
        when = _ts(body.get("ts")) if entry["kind"] == "alert" else entry["event_ts"]
        stamp = local_time(when, tz) if when is not None else "-"
        doc.write([f"{n}. {stamp}  [{entry['kind']}, seq {entry['seq']}]"], size=8.5,
                  family=MONO)
        doc.write(["    " + describe(entry, red)], size=8.5, width=110)
        raised = _ts(body.get("raised")) if entry["kind"] == "alert" else None
        if raised is not None:
            doc.write([f"    recorded and sent at {local_time(raised, tz)}"], size=8)
    if red.unredacted and data.fixes:
        doc.page("Fixes (UNREDACTED: POLICE USE ONLY)")
        doc.write([f"{'#':>3} {'time':<36}{'latitude':>11} {'longitude':>11} {'acc m':>6} "
                   "source"], size=7, family=MONO, width=120)
        for i, f in enumerate(data.fixes, 1):
            when = _ts(f.get("ts"))
            doc.write([f"{i:>3} {local_time(when, tz) if when else '-':<36}{f['lat']:>11.6f} "
                       f"{f['lon']:>11.6f} {float(f.get('acc') or 15):>6.0f} "
                       f"{f.get('fix', 'gnss')}"], size=7, family=MONO, width=120)
    return doc.figs


def _proof_pages(data: ReportData, red: Redactor) -> list:
    from tagwatch.wire import rfc3339

    chain = data.history[0]["chain"]
    times = [e["event_ts"] for e in data.history if e["event_ts"] is not None]
    since, until = rfc3339(min(times) - AROUND_S), rfc3339(max(times) + AROUND_S)
    doc = _Pages()
    doc.page("The proof: chain entries and anchors")
    mono = {"size": 7, "family": MONO, "width": 118}
    doc.write([f"Chain {chain}: each entry's hash covers the hash before it and the entry "
               "itself (rule 2: SHA-256 of the previous hash and the canonical JSON of "
               "[chain, seq, kind, tag, event_ts, alert_id, recorded_at, body_hash], body_hash "
               "being the SHA-256 of the entry's body as stored).", ""], **mono)
    for e in data.history:
        doc.write([f"seq {e['seq']:>7}  {e['kind']:<8} hash {e['hash']}",
                   f"{'':>14}prev {e['prev_hash']}"], **mono)
    doc.write([
        "",
        f"Chain head now: seq {data.head[0]}, hash {data.head[1]}",
        "Check of the whole chain when this report was made: "
        + ("intact (every hash and link verified)." if not data.chain_ok
           else "PROBLEMS: " + "; ".join(data.chain_ok)),
        "",
        *data.anchoring.text,
        "",
        "How to verify this report:",
        "1. Run `tagwatch record verify` (with the anchor file and key configured) on the "
        "record: it recomputes every hash and link of every chain and checks each chain's "
        "latest anchored head; it names any entry changed, removed or reordered.",
        f"2. Run `tagwatch record export --case {data.history[0]['body'].get('case')} "
        f"--since {since} --until {until} --out DIR`: its chain.jsonl holds every entry listed "
        "above with all its hashed fields, so anyone can recompute each hash with the rule "
        "above, without tagwatch (manifest.json states the rule), and compare it with the "
        "hashes printed here.",
        "3. The anchor file's checkpoints are HMAC-SHA256 signed with a key the database never "
        "holds (docs/RECORD.md); whoever holds the key can check the checkpoint named above.",
        "A changed report cannot change the record: the hashes above must match the record.",
    ], **mono)
    return doc.figs


def write_pdf(data: ReportData, out: Path, default_warn_m: float = 250.0,
              now: float | None = None) -> Path:
    import os
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    red = Redactor(data.case, data.unredacted)
    generated = time.time() if now is None else now
    with matplotlib.rc_context({"pdf.fonttype": 42, "font.family": "DejaVu Sans"}):
        warn_m = float(data.case.rules.get("warn_m", default_warn_m))
        figs = [*_summary_pages(data, red, generated), draw_map(data, red, warn_m),
                *_proof_pages(data, red)]
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with PdfPages(tmp, metadata={
                "Title": f"tagwatch alert {data.alert_id}"
                + (" (unredacted)" if data.unredacted else " (redacted)"),
                "Creator": "tagwatch record report",
                "CreationDate": None,
            }) as pdf:
                for fig in figs:
                    pdf.savefig(fig)
            os.chmod(tmp, 0o600)
            os.replace(tmp, out)
        finally:
            for fig in figs:
                plt.close(fig)
            tmp.unlink(missing_ok=True)
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
