"""Canonical JSON and the entry hash: the one definition both writing and verifying use.

Each entry names its hash rule (column hash_rule):

rule 1 (entries written before schema 2; never rewritten, so exported evidence still matches):
  hash = sha256(prev_hash as ASCII hex || UTF-8 canonical JSON of
                [chain, seq, kind, tag, event_ts, alert_id, recorded_at, body])
rule 2 (every entry since schema 2):
  body_hash = sha256(UTF-8 canonical body text) as hex
  hash = sha256(prev_hash as ASCII hex || UTF-8 canonical JSON of
                [chain, seq, kind, tag, event_ts, alert_id, recorded_at, body_hash])
Under rule 2 the chain covers the body only through body_hash, so a fix's body can be
purged (set to NULL) while every hash and link still verifies; a body that is present must
match its body_hash. The two preimages cannot collide: a rule-1 body is a JSON object,
a rule-2 body_hash a JSON string.

Canonical JSON: sorted keys, no whitespace, UTF-8 (no \\u escapes for non-ASCII), no NaN
or infinity, floats in shortest round-trip form (orjson's output, which matches Python's
json for these values). event_ts and recorded_at are always floats (an int 5 and a float
5.0 would hash apart). The body is stored as its canonical text and hashed as stored, so
a verifier never re-encodes it, and a body rewritten to an equivalent but differently
spelled JSON text is still a changed entry.
"""

from __future__ import annotations

import hashlib
import json

import orjson

from tagwatch.record.model import RecordError

GENESIS = "0" * 64

_encode = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical(value: object, what: str) -> str:
    """Canonical JSON text of value; `what` names it in the error."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if b"null" not in text or _same_text(value):
            return text.decode("utf-8")
        # orjson writes NaN and infinity as null: let the strict encoder refuse them.
        # Its text is the canonical one for a value with a null (a fix with no speed).
        return _encode(value)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{what}: not canonical JSON: {exc}") from exc


_PLAIN = frozenset((str, int, bool, type(None)))  # written alike by both encoders


def _same_text(value: object) -> bool:
    """Whether the strict encoder would write value exactly as orjson does.

    It would for plain JSON types, except floats that are not finite (orjson: null;
    strict: refused) or that Python spells with an exponent (below 1e-4 or from 1e16:
    Python 1e-05, orjson 0.00001). Checking this is several times cheaper than encoding
    again, and nearly every fix body has a null (no speed, heading or battery).
    """
    kind = type(value)
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                return False
            if type(item) in _PLAIN:  # a fix body's members, mostly: no call for them
                continue
            if not _same_text(item):
                return False
        return True
    if kind is float:
        return value == 0.0 or 1e-4 <= abs(value) < 1e16  # type: ignore[arg-type]  # NaN: false
    if kind is list or kind is tuple:
        return all(_same_text(item) for item in value)  # type: ignore[attr-defined]
    return value is None or kind is str or kind is int or kind is bool


def entry_hash(
    prev_hash: str,
    chain: str,
    seq: int,
    kind: str,
    tag: str | None,
    event_ts: float | None,
    alert_id: str | None,
    recorded_at: float,
    body_json: str,
) -> str:
    """Hash of one rule-1 chain entry; body_json is the stored canonical body text."""
    # the callers pass finite floats only, so orjson's null-for-NaN cannot occur here
    head = orjson.dumps([chain, seq, kind, tag, event_ts, alert_id, recorded_at])
    doc = head[:-1] + b"," + body_json.encode("utf-8") + b"]"
    return hashlib.sha256(prev_hash.encode("utf-8") + doc).hexdigest()


def body_digest(body_json: str) -> str:
    """body_hash of a rule-2 entry: sha256 hex of the stored canonical body text."""
    return hashlib.sha256(body_json.encode("utf-8")).hexdigest()


def entry_hash_v2(
    prev_hash: str,
    chain: str,
    seq: int,
    kind: str,
    tag: str | None,
    event_ts: float | None,
    alert_id: str | None,
    recorded_at: float,
    body_hash: str,
) -> str:
    """Hash of one rule-2 chain entry (see the module docstring)."""
    doc = orjson.dumps([chain, seq, kind, tag, event_ts, alert_id, recorded_at, body_hash])
    return hashlib.sha256(prev_hash.encode("utf-8") + doc).hexdigest()
