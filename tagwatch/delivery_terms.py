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


def redact(text: str) -> str:
    """Drop anything that looks like a phone number (Twilio errors quote the To number)."""
    return _PHONE.sub("<phone>", text)
