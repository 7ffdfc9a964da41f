"""Bearer-token authentication against the configured users' SHA-256 token hashes.

Only hashes are configured (DESIGN 3.7). The hash of the presented token is compared
with every user's hash in constant time, without stopping at a match, so neither the
comparison nor the position of the user in the list shows in the response time.

EventSource (the browser's SSE client) cannot set headers, so GET /api/events also
takes the token as `?access_token=`. The trade-off: a token in a URL can end up in
access logs and browser history. Only that route accepts it; the daemon should keep
uvicorn's access log off (or redact query strings), and the page keeps the token in
sessionStorage, which is gone when the tab closes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

OPERATOR, VIEWER = "operator", "viewer"
# SHA-256 of tokens that are public: config/tagwatch.example.toml's "example-operator-token".
# The daemon refuses to start with a user holding one of these.
PUBLIC_TOKEN_HASHES = frozenset({hashlib.sha256(b"example-operator-token").hexdigest()})


@dataclass(frozen=True)
class User:
    name: str
    role: str


class Users:
    def __init__(self, users: Iterable) -> None:
        """users: objects with name, role and token_sha256 (tagwatch.config.FeedUser)."""
        self._users = []
        for user in users:
            digest = str(user.token_sha256).strip().lower()
            if len(digest) != 64:
                raise ValueError(
                    f"[[feed.users]] {user.name!r}: token_sha256 must be 64 hex "
                    f"digits, got {len(digest)} characters"
                )
            self._users.append((bytes.fromhex(digest), User(user.name, user.role)))

    def authenticate(self, token: str | None) -> User | None:
        if not token:
            return None
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest, user in self._users:
            if hmac.compare_digest(presented, digest):
                found = user
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
