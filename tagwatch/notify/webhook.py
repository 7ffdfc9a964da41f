"""The police control webhook (DESIGN 3.7): POST of an alert record, signed.

Header `X-Tagwatch-Signature: sha256=<hex HMAC-SHA256(body, secret)>`, plus
`X-Tagwatch-Escalation-Level` and `Idempotency-Key` (alert id, state and level) so a
dispatch system can drop the duplicates an at-least-once sender makes.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx

from tagwatch.config import PoliceConfig
from tagwatch.notify.outcome import SendFailed, Sent, kind_for_status, retry_after_seconds

SIGNATURE_HEADER = "X-Tagwatch-Signature"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str) -> bool:
    """What a receiver does: compare in constant time."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)


def encode(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


class PoliceWebhook:
    def __init__(self, config: PoliceConfig, timeout_s: float = 10.0) -> None:
        self.config = config
        self.client = httpx.AsyncClient(timeout=timeout_s)

    async def post(self, record: dict, level: int) -> Sent:
        body = encode(record)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(body, self.config.secret),
            "X-Tagwatch-Escalation-Level": str(level),
            "Idempotency-Key": f"{record['id']}:{record['state']}:{level}",
        }
        where = f"police webhook {self.config.webhook_url}"
        try:
            response = await self.client.post(
                self.config.webhook_url, content=body, headers=headers
            )
        except httpx.ConnectTimeout as exc:
            raise SendFailed("retry", f"{where}: connect timeout: {exc}") from None
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
