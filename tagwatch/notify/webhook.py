"""The police control webhook (DESIGN 3.7): POST of an alert record, signed.

Header `X-Tagwatch-Signature: t=<unix time>,level=<escalation>,sha256=<hex>`, the hex
being HMAC-SHA256 with the shared secret over "<t>.<level>.<body>": the time and the
escalation level are signed with the body, so neither a replay of an old POST nor a
changed level passes `verify`, which refuses signatures older than 5 minutes (or more
than 5 minutes ahead). Also `X-Tagwatch-Escalation-Level` and `Idempotency-Key`
(alert id, state, level and a digest of the record, so each version of an alert's
record has its own key and a resend of one version the same) for a dispatch system to
drop the duplicates an at-least-once sender makes.

The webhook URL may carry a secret (user:password@ or a query token): every error text
names it without them, and httpx's own request log is kept at WARNING and redacted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

import httpx

from tagwatch.config import PoliceConfig
from tagwatch.delivery_terms import redact_urls
from tagwatch.notify.outcome import SendFailed, Sent, kind_for_status, retry_after_seconds

SIGNATURE_HEADER = "X-Tagwatch-Signature"
MAX_AGE_S = 300.0


class _RedactUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_urls(record.getMessage()), ()
        return True


for _name in ("httpx", "httpcore"):
    _logger = logging.getLogger(_name)
    _logger.setLevel(max(_logger.level, logging.WARNING))
    _logger.addFilter(_RedactUrls())


def sign(body: bytes, secret: str, level: int, at: float | None = None) -> str:
    """The signature header's value for body at escalation `level`, signed at `at`."""
    t = int(time.time() if at is None else at)
    mac = hmac.new(secret.encode(), f"{t}.{level}.".encode() + body, hashlib.sha256)
    return f"t={t},level={level},sha256={mac.hexdigest()}"


def verify(
    body: bytes,
    header: str | None,
    secret: str,
    now: float | None = None,
    max_age_s: float = MAX_AGE_S,
) -> bool:
    """What a receiver does: True if the signature is good and at most max_age_s old
    (or ahead). Compared in constant time. The level signed is the header's `level`."""
    if not header:
        return False
    fields = dict(part.partition("=")[::2] for part in header.split(","))
    try:
        t, level = int(fields["t"]), int(fields["level"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - t) > max_age_s:
        return False
    return hmac.compare_digest(sign(body, secret, level, t), header.strip())


def encode(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def idempotency_key(record: dict, level: int, body: bytes) -> str:
    version = hashlib.sha256(body).hexdigest()[:16]
    return f"{record['id']}:{record['state']}:{level}:{version}"


class PoliceWebhook:
    def __init__(self, config: PoliceConfig, timeout_s: float = 10.0) -> None:
        self.config = config
        self.client = httpx.AsyncClient(timeout=timeout_s)

    async def post(self, record: dict, level: int) -> Sent:
        body = encode(record)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, self.config.secret, level),
            "X-Tagwatch-Escalation-Level": str(level),
            "Idempotency-Key": idempotency_key(record, level, body),
        }
        where = f"police webhook {redact_urls(self.config.webhook_url)}"
        try:
            response = await self.client.post(
                self.config.webhook_url, content=body, headers=headers
            )
        except httpx.ConnectTimeout:
            raise SendFailed("retry", f"{where}: connect timeout") from None
        except httpx.TimeoutException:
            raise SendFailed("unknown", f"{where}: no answer in time") from None
        except httpx.HTTPError as exc:
            raise SendFailed("retry", f"{where}: {type(exc).__name__}: {exc}") from None
        if response.is_success:
            return Sent({"status": response.status_code})
        raise SendFailed(
            kind_for_status(response.status_code),
            f"{where}: HTTP {response.status_code}: {response.text[:200]}",
            retry_after_seconds(response.headers.get("Retry-After")),
        )

    async def aclose(self) -> None:
        await self.client.aclose()
