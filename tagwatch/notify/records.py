"""Small helpers over alert records (DESIGN 3.3 dicts) shared by the notify modules.

The escalation level travels in the `escalated` record's `detail`, which starts with
"escalation level N:" (3.3 has no field for it and its key set is a fixed contract).
"""

from __future__ import annotations

import hashlib
import re

from tagwatch.wire import parse_rfc3339, rfc3339

DELIVERY_FAILED = "delivery.failed"
_LEVEL = re.compile(r"escalation level (\d+):")


def parse_ts(text: str, what: str) -> float:
    """Unix seconds of an RFC 3339 time with an offset; the error names `what`."""
    try:
        return parse_rfc3339(text)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{what}: {text!r} is not an RFC 3339 time with an offset") from None


def record_time(record: dict, key: str = "ts") -> float:
    return parse_ts(record.get(key), f"alert {record.get('id')!r}: {key}")


def escalation_level(record: dict) -> int:
    """The level an `escalated` record carries; 0 for any other record."""
    if record.get("state") != "escalated":
        return 0
    found = _LEVEL.match(record.get("detail") or "")
    return int(found.group(1)) if found else 1


def escalated_record(record: dict, level: int, reason: str, ts: float, raised: float) -> dict:
    return {
        **record,
        "state": "escalated",
        "ts": rfc3339(ts),
        "raised": rfc3339(raised),
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
        "detail": f"{channel} delivery of alert {alert_id} failed for good: {error}",
    }
