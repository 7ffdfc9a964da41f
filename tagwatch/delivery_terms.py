"""Delivery vocabulary shared by the notifier and the case record (which the
notifier imports, so it cannot live in tagwatch.notify): how far a Twilio
message has got, and how phone numbers are hidden in provider errors."""

from __future__ import annotations

import re

# Twilio message and call statuses, later = more advanced. Status callbacks may come
# twice or out of order: the most advanced one wins, not the last.
STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "initiated": 1,  # calls
    "sending": 2,
    "ringing": 2,  # calls
    "sent": 3,
    "in-progress": 3,  # calls
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
    "completed": 4,  # calls
    "busy": 4,  # calls
    "no-answer": 4,  # calls
    "read": 5,
}

_PHONE = re.compile(r"\+?\d[\d ()-]{6,}\d")
# In a URL: the user information (user:password@) and the query string's values.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:([^/\s@:]*):)?[^/\s@]*@")
_URL_QUERY = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#]*)\?([^\s#'\"]*)")


def _query_values(match: re.Match[str]) -> str:
    parts = (p.partition("=") for p in match.group(2).split("&"))
    return match.group(1) + "?" + "&".join(k + ("=***" if sep else "") for k, sep, _v in parts)


def _userinfo(match: re.Match[str]) -> str:
    user = match.group(2)
    return f"{match.group(1)}{user}:***@" if user is not None else f"{match.group(1)}***@"


def redact_urls(text: str) -> str:
    """Hide secrets URLs in text may carry: user:password@ becomes user:***@, a bare
    user@ (often a token) ***@, and every query value ***."""
    return _URL_QUERY.sub(_query_values, _URL_USERINFO.sub(_userinfo, text))


def redact(text: str) -> str:
    """Drop anything that looks like a phone number (Twilio errors quote the To number)
    and the secrets of any URL in the text."""
    return _PHONE.sub("<phone>", redact_urls(text))
