"""`tagwatch replay CASES INPUT`: the full rule pipeline offline, in event time.

INPUT is a CSV of fixes (a header; columns named as the fix fields of DESIGN
3.2, `tag` and `ts` required) or a JSON-lines capture (`.jsonl`, or any file
whose first non-blank character is `{`): one `{"topic", "payload",
"received"?}` per line, in arrival order. Every input becomes an MQTT-shaped
message and goes through the same decoder and pipeline as the daemon's.

A capture's `payload` is the fix object or array; a string payload stands for
raw bytes that were not JSON (so captures of rejected input replay too).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from tagwatch.config import Rules
from tagwatch.engine.alerts import encode
from tagwatch.pipeline import RATE_LIMITED, Inbound, Pipeline
from tagwatch.wire import (
    MAX_DEPTH,
    Fix,
    Topics,
    decode_payload,
    json_depth,
    parse_rfc3339,
    too_deep,
)
from zones import ZoneSet

BATCH = 2000
NUMERIC = ("lat", "lon", "acc", "spd", "hdg", "bat")
_ELEMENT = re.compile(r"^fix \d+ of \d+: ")  # a batch element's detail starts so
FIELDS = frozenset(f.name for f in msgspec.structs.fields(Fix))


class ReplayInputError(ValueError):
    """Replay input that cannot be read at all (no header, a missing column): names the file."""


@dataclass(frozen=True)
class BadLine:
    """A line that gives no message: its number, the field at fault and why."""

    line: int
    field: str
    problem: str


class Report:
    """What replay says on stderr: each bad line with its number and field (never
    dropped in silence) and, once each, the tags and devices that belong to no case.
    A victim device's rejection names the field only: its values may be positions."""

    def __init__(self, name: str, err: IO[str]) -> None:
        self.name, self.err = name, err
        self.bad = 0
        self._unknown: set[str] = set()

    def bad_line(self, line: int | None, field: str, problem: str) -> None:
        self.bad += 1
        where = f"line {line}" if line is not None else "line ?"
        self.err.write(f"tagwatch: {self.name}: {where}: {field}: {problem}\n")

    def unknown(self, what: str) -> None:
        if what not in self._unknown:
            self._unknown.add(what)
            self.err.write(f"tagwatch: {self.name}: {what}: its fixes are not used (said once)\n")


def read_lines(path: Path, topics: Topics) -> Iterator[tuple[int, Inbound | BadLine]]:
    """Every message of the input with its line number, or the bad line in its place."""
    with open(path, "rb") as stream:
        capture = path.suffix == ".jsonl" or stream.read(4096).lstrip()[:1] == b"{"
        stream.seek(0)
        lines = _text_lines(stream)
        if capture:
            yield from _capture(lines)
        else:
            yield from _csv(lines, str(path), topics)


def read_messages(path: Path, topics: Topics) -> Iterator[Inbound]:
    """The messages of the input; a bad line raises ReplayInputError naming it."""
    for number, item in read_lines(path, topics):
        if isinstance(item, BadLine):
            raise ReplayInputError(f"{path}: line {number}: {item.field}: {item.problem}")
        yield item


def _text_lines(stream: IO[bytes]) -> Iterator[tuple[int, str | BadLine]]:
    """The lines as text (a UTF-8 byte order mark ignored); a line that is not UTF-8
    is a bad line, and the others are still read."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            yield number, BadLine(number, "(line)", problem)


def _capture(lines: Iterator[tuple[int, str | BadLine]]) -> Iterator[tuple[int, Inbound | BadLine]]:
    for number, line in lines:
        if isinstance(line, BadLine):
            yield number, line
            continue
        if not line.strip():
            continue
        raw_line = line.encode("utf-8", "surrogatepass")
        if too_deep(raw_line) and json_depth(raw_line) > MAX_DEPTH + 1:  # the line's {} is 1
            problem = (
                f"payload nested deeper than {MAX_DEPTH} levels (the daemon rejects it as "
                "too_deep)"
            )
            yield number, BadLine(number, "payload", problem)
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, BadLine(number, "(line)", f"not JSON ({exc.msg})")
            continue
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("topic"), str)
            or "payload" not in entry
        ):
            problem = 'expected {"topic": str, "payload": ...}'
            yield number, BadLine(number, "(line)", problem)
            continue
        received = entry.get("received")
        try:
            at = parse_rfc3339(received) if isinstance(received, str) else None
        except ValueError:
            at = None
        if received is not None and at is None:
            yield number, BadLine(number, "received", "expected an RFC 3339 time with offset")
            continue
        payload = entry["payload"]
        raw = payload.encode() if isinstance(payload, str) else msgspec.json.encode(payload)
        yield number, Inbound(entry["topic"], raw, at)


def _csv(
    lines: Iterator[tuple[int, str | BadLine]], name: str, topics: Topics
) -> Iterator[tuple[int, Inbound | BadLine]]:
    bad: list[BadLine] = []
    last = [0]  # the number of the last line the reader took (a row may span lines)

    def text() -> Iterator[str]:
        for number, line in lines:
            if isinstance(line, BadLine):
                bad.append(line)
            else:
                last[0] = number
                yield line

    reader = csv.DictReader(text())
    missing = [c for c in ("tag", "ts") if c not in (reader.fieldnames or [])]
    if missing:
        raise ReplayInputError(f"{name}: header lacks column(s) {', '.join(missing)}")
    for row in reader:
        while bad:
            line = bad.pop(0)
            yield line.line, line
        tag = row.get("tag") or ""
        if not tag:
            yield last[0], BadLine(last[0], "tag", "is empty")
            continue
        fix = {k: _value(k, v) for k, v in row.items() if k and v not in (None, "")}
        yield last[0], Inbound(topics.tag_fix(tag), msgspec.json.encode(fix), None)
    for line in bad:
        yield line.line, line


def _value(field: str, text: str) -> object:
    # Numbers are given to the decoder as numbers; anything unparseable stays a
    # string so the decoder rejects it with its usual reason and detail.
    if field in NUMERIC or field == "ts":
        try:
            return float(text)
        except ValueError:
            return text
    if field == "seq":
        try:
            return int(text)
        except ValueError:
            return text
    return text


def replay(
    zoneset: ZoneSet,
    rules: Rules,
    path: Path,
    out: IO[bytes],
    rate_limit: tuple[float, int] | None = None,
    report: Report | None = None,
    owntracks_prefix: str = "",
) -> int:
    """Write every alert record, one JSON object per line; returns how many.

    `rate_limit` is the daemon's [ingest] tag_rate_per_s and tag_burst: applied on the
    capture's `received` times, as the daemon did on its receiving clock. Bad lines and
    the daemon's rejections go to `report` (stderr by default) with their line number
    and field; `report.bad` counts them. The messages go through the daemon's pipeline
    as they are: the alerts are the daemon's. `owntracks_prefix` is the daemon's [ingest]
    owntracks_prefix: its OwnTracks messages are victim fixes here as there.
    """
    report = report or Report(str(path), sys.stderr)
    topics = Topics(owntracks=owntracks_prefix)
    pipeline = Pipeline(zoneset, rules, topics, event_clock=True, rate_limit=rate_limit)
    count = 0
    batch: list[tuple[int, Inbound | BadLine]] = []
    for number, item in read_lines(path, topics):
        batch.append((number, item))
        if len(batch) == BATCH:
            count += _flush(pipeline, batch, out, report)
    return count + _flush(pipeline, batch, out, report)


def _flush(
    pipeline: Pipeline, batch: list[tuple[int, Inbound | BadLine]], out: IO[bytes], report: Report
) -> int:
    result = pipeline.process([item for _, item in batch if isinstance(item, Inbound)])
    # The rate limit's rejections are not about a line's content: said as they are.
    limited = [r for r in result.rejected if r.rejection.reason == RATE_LIMITED]
    _report(pipeline, batch, len(result.rejected) - len(limited), report)
    for r in limited:
        report.bad_line(None, f"tag {r.source!r}", f"{r.rejection.reason}: {r.rejection.detail}")
    if result.rate_limited:
        report.bad_line(None, "(messages)", f"{result.rate_limited} more rate_limited")
    batch.clear()
    for record in result.records:
        out.write(encode(record) + b"\n")
    return len(result.records)


def _report(
    pipeline: Pipeline, batch: list[tuple[int, Inbound | BadLine]], rejected: int, report: Report
) -> None:
    """The batch's bad lines and rejections, in line order. The pipeline's rejections
    carry no line, so in a batch that has some each message is checked again on its
    own (the same pure checks: topic, case membership, the wire decoder)."""
    explained = 0
    for number, item in batch:
        if isinstance(item, BadLine):
            report.bad_line(number, item.field, item.problem)
        elif rejected:
            explained += _explain(pipeline, number, item, report)
    for _ in range(rejected - explained):  # not expected: said without its line, not lost
        report.bad_line(None, "(payload)", "rejected by the decoder")


def _explain(pipeline: Pipeline, number: int, message: Inbound, report: Report) -> int:
    """Report why the pipeline rejected this message, if it did; returns how many times."""
    parsed = pipeline.topics.parse(message.topic)
    if parsed is None:
        report.bad_line(number, "topic", f"{message.topic!r} is not a fix topic")
        return 1
    source, ident = parsed
    engine = pipeline.engine
    if not (engine.knows_tag(ident) if source == "tag" else engine.knows_device(ident)):
        report.unknown(f"{'tag' if source == 'tag' else 'device'} {ident!r} belongs to no case")
        return 1
    _, rejections = decode_payload(
        source, ident, message.payload, message.received, pipeline.rules.max_future_s
    )
    for r in rejections:
        first = _ELEMENT.sub("", r.detail, count=1).split(" ", 1)[0].strip(":,")
        field = first if first in FIELDS else "(payload)"
        detail = r.detail if source == "tag" else "(victim device: values withheld)"
        report.bad_line(number, field, f"{r.reason}: {detail}")
    return len(rejections)
