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
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import msgspec

from tagwatch.config import Rules
from tagwatch.engine.alerts import encode
from tagwatch.pipeline import Inbound, Pipeline
from tagwatch.wire import MAX_DEPTH, Topics, json_depth, parse_rfc3339, too_deep
from zones import ZoneSet

BATCH = 2000
NUMERIC = ("lat", "lon", "acc", "spd", "hdg", "bat")


class ReplayInputError(ValueError):
    """Bad replay input: names the file and line."""


def read_messages(path: Path, topics: Topics) -> Iterator[Inbound]:
    with open(path, encoding="utf-8", newline="") as stream:
        first = stream.read(1)
        while first.isspace():
            first = stream.read(1)
        stream.seek(0)
        if first == "{" or path.suffix == ".jsonl":
            yield from _capture(stream, str(path))
        else:
            yield from _csv(stream, str(path), topics)


def _capture(stream: IO[str], name: str) -> Iterator[Inbound]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        raw_line = line.encode("utf-8", "surrogatepass")
        if too_deep(raw_line) and json_depth(raw_line) > MAX_DEPTH + 1:  # the line's {} is 1
            raise ReplayInputError(
                f"{name}: line {number}: payload nested deeper than {MAX_DEPTH} levels "
                "(the daemon rejects it as too_deep)"
            )
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayInputError(f"{name}: line {number}: not JSON ({exc.msg})") from None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("topic"), str)
            or "payload" not in entry
        ):
            raise ReplayInputError(
                f'{name}: line {number}: expected {{"topic": str, "payload": ...}}'
            )
        payload = entry["payload"]
        raw = payload.encode() if isinstance(payload, str) else msgspec.json.encode(payload)
        yield Inbound(entry["topic"], raw, _received(entry.get("received"), name, number))


def _received(value: object, name: str, number: int) -> float | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value) if isinstance(value, str) else None
    except ValueError:
        pass
    raise ReplayInputError(
        f"{name}: line {number}: received: expected an RFC 3339 time with offset"
    )


def _csv(stream: IO[str], name: str, topics: Topics) -> Iterator[Inbound]:
    reader = csv.DictReader(stream)
    missing = [c for c in ("tag", "ts") if c not in (reader.fieldnames or [])]
    if missing:
        raise ReplayInputError(f"{name}: header lacks column(s) {', '.join(missing)}")
    for row in reader:
        tag = row.get("tag") or ""
        if not tag:
            raise ReplayInputError(f"{name}: line {reader.line_num}: tag is empty")
        fix = {k: _value(k, v) for k, v in row.items() if k and v not in (None, "")}
        yield Inbound(topics.tag_fix(tag), msgspec.json.encode(fix), None)


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
    owntracks_prefix: str = "",
) -> int:
    """Write every alert record, one JSON object per line; returns how many.

    `rate_limit` is the daemon's [ingest] tag_rate_per_s and tag_burst: applied on the
    capture's `received` times, as the daemon did on its receiving clock.
    `owntracks_prefix` is the daemon's [ingest] owntracks_prefix: its OwnTracks messages
    are victim fixes here as there."""
    topics = Topics(owntracks=owntracks_prefix)
    pipeline = Pipeline(zoneset, rules, topics, event_clock=True, rate_limit=rate_limit)
    count = 0
    batch: list[Inbound] = []
    for message in read_messages(path, topics):
        batch.append(message)
        if len(batch) == BATCH:
            count += _flush(pipeline, batch, out)
    return count + _flush(pipeline, batch, out)


def _flush(pipeline: Pipeline, batch: list[Inbound], out: IO[bytes]) -> int:
    result = pipeline.process(batch)
    batch.clear()
    for record in result.records:
        out.write(encode(record) + b"\n")
    return len(result.records)
