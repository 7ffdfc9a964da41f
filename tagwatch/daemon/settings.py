"""The daemon's settings made from its configuration: the broker connection, the anchor
writer of the record, and the start-up summary of the notification channels."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from tagwatch.config import Config
from tagwatch.delivery_terms import redact_urls
from tagwatch.ingest.mqtt import BrokerSettings
from tagwatch.record.anchor import AnchorWriter

log = structlog.get_logger("tagwatch.daemon")


def anchor_writer(keep) -> AnchorWriter | None:
    if keep.anchor_path is None or keep.anchor_key is None:
        log.warning("anchoring_off", detail="no [record] anchor_path: record verify cannot "
                    "prove the chains against someone who can write the database")
        return None
    return AnchorWriter(keep.anchor_path, keep.anchor_key)


def broker_settings(config: Config, url: str | None = None) -> BrokerSettings:
    b = config.broker
    if url is not None:
        return BrokerSettings.from_url(
            url,
            client_id=b.client_id,
            session_expiry_s=b.session_expiry_s,
            keepalive_s=b.keepalive_s,
            max_packet_bytes=b.max_packet_kb * 1024,
        )
    return BrokerSettings(
        host=b.host,
        port=b.port,
        tls=b.tls,
        ca_file=str(b.ca_file) if b.ca_file else None,
        cert_file=str(b.cert_file) if b.cert_file else None,
        key_file=str(b.key_file) if b.key_file else None,
        username=b.username,
        password=b.password,
        client_id=b.client_id,
        session_expiry_s=b.session_expiry_s,
        keepalive_s=b.keepalive_s,
        max_packet_bytes=b.max_packet_kb * 1024,
        nodes=b.nodes if len(b.nodes) > 1 else (),  # several nodes: tried in turn
    )


def summarise_notify(config: Config) -> Callable[[], None]:
    def say() -> None:
        if config.notify.twilio is None:
            log.warning("notify", detail="no SMS or calls: [notify.twilio] absent")
        else:
            log.info(
                "notify",
                detail="SMS and calls through Twilio",
                api_base=redact_urls(config.notify.twilio.api_base),
            )
        if config.notify.police is None:
            log.info("notify", detail="no police webhook: [notify.police] webhook_url not set")
        else:
            log.info("notify", detail="police webhook configured")

    return say
