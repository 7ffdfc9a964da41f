"""Per-tag message rate limit (DESIGN 3.2 `rate_limited`, 5 "per-tag message rate"): token
buckets keyed by fix topic (one per tag or victim device), on the receiving clock.

Pure and deterministic: the clock is each message's `received` time, so `tagwatch replay`
of a capture with `received` makes the same decisions as the daemon did; without it
there is no limit (as there is no future check). O(1) a message: one dict lookup and a
few float operations, checked before the payload is decoded.

A bucket holds up to `burst` messages and refills at `rate_per_s`. The defaults
([ingest] tag_rate_per_s = 10, tag_burst = 1000): a tag reports every 5 s at its fastest
and uploads a backlog as arrays, so 10 messages a second is 50 times its normal peak;
1,000 is a backlog of single messages from 80 minutes of fast reporting (what the broker
holds for a tag while the daemon is down, delivered at once when it is back).
"""

from __future__ import annotations

import math

MAX_KEYS = 200_000  # buckets kept; beyond it all are forgotten (each starts full again)
REPORT_S = 10.0  # one rejection of a limited topic recorded and published per this time


class TokenBuckets:
    __slots__ = ("buckets", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if not rate_per_s > 0 or burst < 1:
            raise ValueError(f"rate {rate_per_s!r}/s and burst {burst!r} must be above 0")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        # key -> [tokens, time of the last refill, time of the last reported rejection]
        self.buckets: dict[str, list[float]] = {}

    def admit(self, key: str, now: float) -> bool:
        """Take one token from `key`'s bucket at time `now`; False when it is empty."""
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_KEYS:
                self.buckets.clear()
            self.buckets[key] = [self.burst - 1.0, now, -math.inf]
            return True
        tokens = bucket[0]
        elapsed = now - bucket[1]
        if elapsed > 0.0:  # a clock that steps back refills nothing
            tokens = min(self.burst, tokens + elapsed * self.rate_per_s)
            bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def report_due(self, key: str, now: float) -> bool:
        """Whether a limited message of `key` is the one of its REPORT_S to record and
        publish (the rest are counted only: a flood must not become a flood of records)."""
        bucket = self.buckets[key]
        if now - bucket[2] >= REPORT_S:
            bucket[2] = now
            return True
        return False
