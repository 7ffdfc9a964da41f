"""What a channel's send attempt came to, in the terms the dispatcher acts on."""

from __future__ import annotations

from dataclasses import dataclass

from tagwatch.delivery_terms import redact

__all__ = ["SendFailed", "Sent", "redact"]


@dataclass(frozen=True)
class Sent:
    """Accepted by the provider; `result` is stored on the outbox row."""

    result: dict


class SendFailed(Exception):
    """A send that did not go through.

    kind: "retry" (temporary: 5xx, 429, network), "unknown" (timeout after the request
    left: it may have been delivered; resend anyway, same text), "permanent" (4xx:
    resending the same request cannot work). retry_after: the provider's Retry-After.
    """

    def __init__(self, kind: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(redact(detail))
        self.kind = kind
        self.detail = redact(detail)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is treated as absent)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def kind_for_status(status: int) -> str:
    if status == 429 or status == 408 or status >= 500:
        return "retry"
    return "permanent"
