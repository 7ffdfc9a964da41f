"""Alert records (DESIGN 3.3) and their deterministic ids.

An alert is an episode: one id from its opening to its resolution, with a
record published at every state change. The id hashes case, tag, type, zone
(or victim) and the event time of the fix that opened the episode, so a
redelivered or replayed fix can never make a second alert.
"""

from __future__ import annotations

import hashlib

import msgspec

from tagwatch.wire import rfc3339

OPEN, UPDATED, ACKNOWLEDGED, ESCALATED, RESOLVED = (
    "open",
    "updated",
    "acknowledged",
    "escalated",
    "resolved",
)
CRITICAL, WARNING, INFO = "critical", "warning", "info"
SEVERITY_RANK = {INFO: 0, WARNING: 1, CRITICAL: 2}


class AlertRecord(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One alert record, exactly the fields of DESIGN 3.3 (null where they do not apply)."""

    id: str
    type: str
    severity: str
    state: str
    case: str
    tag: str
    zone: str | None = None
    victim: str | None = None
    ts: str
    raised: str
    lat: float | None = None
    lon: float | None = None
    acc: float | None = None
    distance_m: float | None = None
    closing_mps: float | None = None
    eta_s: float | None = None
    confidence: str | None = None
    escalation: int = 0  # the escalation level reached; the engine never escalates
    detail: str = ""


_encoder = msgspec.json.Encoder()


def encode(record: AlertRecord) -> bytes:
    return _encoder.encode(record)


def to_dict(record: AlertRecord) -> dict:
    return msgspec.structs.asdict(record)


def alert_id(case: str, tag: str, kind: str, subject: str | None, opened_ts: float) -> str:
    """Deterministic id of one episode; `subject` is the zone or the victim id."""
    key = f"{case}\x1f{tag}\x1f{kind}\x1f{subject or ''}\x1f{rfc3339(opened_ts)}"
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
