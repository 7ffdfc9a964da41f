"""Prometheus metrics of deploy/METRICS.md, in a private registry.

Beyond METRICS.md (additions, documented here until METRICS.md lists them):
`tagwatch_broker_reconnects_total`, `tagwatch_broker_sessions_lost_total` (a reconnect
with session_present false: possible loss), `tagwatch_duplicates_total`,
`tagwatch_record_available` (0 during a record outage),
`tagwatch_publish_too_large_total` (records not published to MQTT because they were
larger than [broker] max_packet_kb; they are in the case record),
`tagwatch_cases_loaded` and `tagwatch_cases_refused` (case files refused at the last load;
/readyz names them),
`tagwatch_batch_failures_total` (a batch, or a piece of one, whose handling raised: it is
split until the failing messages are found, which are rejected as internal_error).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tagwatch.pipeline import REASONS as PIPELINE_REASONS
from tagwatch.signing import REASONS as SIGNING_REASONS
from tagwatch.wire import REASONS

CHANNELS = ("sms", "call", "police", "webhook", "feed")
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.up = Gauge("tagwatch_up", "1 while the daemon runs", registry=r)
        self.broker_connected = Gauge(
            "tagwatch_broker_connected",
            "1 when connected with subscriptions acknowledged",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "tagwatch_outbox_depth", "outbox rows not yet delivered", registry=r
        )
        self.deliveries_failed = Counter(
            "tagwatch_deliveries_failed", "delivery attempts that failed", ["channel"], registry=r
        )
        self.write_errors = Counter(
            "tagwatch_record_write_errors", "failed writes (commits) to the case record", registry=r
        )
        self.tags_silent = Gauge(
            "tagwatch_tags_silent",
            "tags in an open case with no message for no_comms_s",
            registry=r,
        )
        self.fixes = Counter("tagwatch_fixes", "fixes accepted", registry=r)
        self.rejected = Counter(
            "tagwatch_rejected", "rejected payloads or fixes", ["reason"], registry=r
        )
        self.alerts = Counter("tagwatch_alerts", "alert records raised", ["type"], registry=r)
        self.batch_seconds = Histogram(
            "tagwatch_batch_seconds",
            "decode, evaluate and commit one micro-batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_seconds = Histogram(
            "tagwatch_record_write_seconds",
            "one case-record commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reconnects = Counter("tagwatch_broker_reconnects", "broker reconnections", registry=r)
        self.sessions_lost = Counter(
            "tagwatch_broker_sessions_lost",
            "reconnects without the session (possible loss)",
            registry=r,
        )
        self.duplicates = Counter("tagwatch_duplicates", "duplicate fixes dropped", registry=r)
        self.record_available = Gauge(
            "tagwatch_record_available", "0 while the case record cannot be written", registry=r
        )
        self.publish_too_large = Counter(
            "tagwatch_publish_too_large",
            "MQTT publications refused before sending: larger than [broker] max_packet_kb",
            registry=r,
        )
        self.batch_failures = Counter(
            "tagwatch_batch_failures",
            "batches (or pieces of one) whose handling raised; split to set the culprit aside",
            registry=r,
        )
        for reason in sorted(REASONS | SIGNING_REASONS | PIPELINE_REASONS):
            self.rejected.labels(reason=reason)  # every closed-set label shows from the start
        for channel in CHANNELS:
            self.deliveries_failed.labels(channel=channel)
        self.cases_loaded = Gauge("tagwatch_cases_loaded", "cases in force (monitored)", registry=r)
        self.cases_refused = Gauge(
            "tagwatch_cases_refused",
            "case files refused at the last load (start or reload); /readyz names them",
            registry=r,
        )
        self.record_available.set(1)
        self._reconnects_seen = 0
        self._sessions_lost_seen = 0

    def broker(self, connected: bool, reconnects: int, sessions_lost: int) -> None:
        """Follow the connection's own counters (they only grow)."""
        self.broker_connected.set(1 if connected else 0)
        if reconnects > self._reconnects_seen:
            self.reconnects.inc(reconnects - self._reconnects_seen)
            self._reconnects_seen = reconnects
        if sessions_lost > self._sessions_lost_seen:
            self.sessions_lost.inc(sessions_lost - self._sessions_lost_seen)
            self._sessions_lost_seen = sessions_lost

    def cases(self, loaded: int, refused: int) -> None:
        self.cases_loaded.set(loaded)
        self.cases_refused.set(refused)

    def render(self) -> bytes:
        return generate_latest(self.registry)
