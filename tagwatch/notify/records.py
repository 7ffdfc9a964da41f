"""Small helpers over alert records (DESIGN 3.3 dicts) shared by the notify modules.

The escalation level reached travels in the record's `escalation` field (DESIGN 3.3): an
`escalated` record carries its new level, every later record of the alert keeps it.
"""

from __future__ import annotations

import hashlib

from tagwatch.wire import parse_rfc3339, rfc3339

DELIVERY_FAILED = "delivery.failed"


def parse_ts(text: str, what: str) -> float:
    """Unix seconds of an RFC 3339 time with an offset; the error names `what`."""
    try:
        return parse_rfc3339(text)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{what}: {text!r} is not an RFC 3339 time with an offset") from None


def record_time(record: dict, key: str = "ts") -> float:
    return parse_ts(record.get(key), f"alert {record.get('id')!r}: {key}")


def escalation_level(record: dict) -> int:
    """The escalation level the record says was reached; 0 for none (or a record written
    before the field existed)."""
    level = record.get("escalation")
    return level if isinstance(level, int) and not isinstance(level, bool) else 0


def escalated_record(record: dict, level: int, reason: str, ts: float, raised: float) -> dict:
    return {
        **record,
        "state": "escalated",
        "ts": rfc3339(ts),
        "raised": rfc3339(raised),
        "escalation": level,
        "detail": f"escalation level {level}: {reason}",
    }


def failure_alert(
    alert_id: str,
    channel: str,
    row_id: int,
    case: str,
    tag: str | None,
    victim: str | None,
    error: str,
    now: float,
) -> dict:
    """An operators' alert for a delivery that kept failing (no position, no phone)."""
    key = f"{alert_id}\x1f{channel}\x1f{row_id}"
    return {
        "id": hashlib.sha256(key.encode()).hexdigest()[:24],
        "type": DELIVERY_FAILED,
        "severity": "critical",
        "state": "open",
        "case": case,
        "tag": tag,
        "zone": None,
        "victim": victim,
        "ts": rfc3339(now),
        "raised": rfc3339(now),
        "lat": None,
        "lon": None,
        "acc": None,
        "distance_m": None,
        "closing_mps": None,
        "eta_s": None,
        "confidence": None,
        "escalation": 0,
        "detail": f"{channel} delivery of alert {alert_id} failed for good: {error}",
    }
