"""`tagwatch run`: validate the configuration and the cases, open the record, run."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path

import structlog

from tagwatch import signing
from tagwatch.config import ConfigError, load_config, missing_paths
from tagwatch.daemon import logs
from tagwatch.daemon.caseset import (
    CaseSet,
    CasesRefused,
    freeze_long_lived,
    load_caseset,
    log_caseset,
)
from tagwatch.daemon.service import Daemon
from tagwatch.daemon.settings import broker_settings, summarise_notify
from tagwatch.feed.auth import PUBLIC_TOKEN_HASHES
from tagwatch.pipeline import FaultRefused
from tagwatch.record import Record, RecordError

log = structlog.get_logger("tagwatch.daemon")
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def _fail(code: int, message: str) -> int:
    print(f"tagwatch: {message}", file=sys.stderr)
    return code


def run(config_path: Path | None, environ: Mapping[str, str]) -> int:
    try:
        config = load_config(config_path, environ)
    except ConfigError as exc:
        return _fail(EXIT_BAD_INPUT, str(exc))
    # The record's folder, before anything starts (a missing cases path is only "not
    # ready" to the daemon: it starts and waits for a reload to find it).
    missing = missing_paths(config, cases=False)
    if missing:
        return _fail(EXIT_BAD_INPUT, f"{config.path or 'configuration'}: " + "; ".join(missing))
    public = [u.name for u in config.feed.users if u.token_sha256 in PUBLIC_TOKEN_HASHES]
    if public:
        return _fail(
            EXIT_BAD_INPUT,
            f"[[feed.users]] {public[0]!r}: token_sha256 is the example's, whose token is "
            "public (config/tagwatch.example.toml): make a new token and put its SHA-256 here",
        )
    logs.configure(config.log.level, config.log.json)
    log.info("config", source=str(config.path), config=config.redacted())
    summarise_notify(config)()
    try:
        caseset = load_caseset(config.cases.path)
    except CasesRefused as exc:  # no such path: up, not ready, until a reload finds it
        caseset = CaseSet({}, {str(config.cases.path): str(exc)})
    log_caseset(caseset, config.cases.path)
    if caseset.refused:
        print(  # the terminal too: the log may be JSON for a collector
            f"tagwatch: {len(caseset.refused)} case file(s) refused, "
            f"{len(caseset.cases)} case(s) loaded: " + "; ".join(caseset.refused.values()),
            file=sys.stderr,
        )
    log.info("cases_loaded", cases=sorted(caseset.cases), path=str(config.cases.path))
    try:
        record = Record.open(config.record.url)
    except RecordError as exc:
        log.error("record_open_failed", error=str(exc))
        return _fail(EXIT_FAILURE, f"case record: {exc}")
    try:
        daemon = _daemon_class(config)(
            config, record, caseset.zoneset, caseset.cases, caseset.refused
        )
    except signing.KeyFileError as exc:
        record.close()
        log.error("tag_keys_refused", error=str(exc))
        return _fail(EXIT_BAD_INPUT, str(exc))
    except FaultRefused as exc:
        record.close()
        log.error("test_fault_refused", error=str(exc))
        return _fail(EXIT_BAD_INPUT, str(exc))
    if daemon.pipeline.keys is not None:
        log.info(
            "signed_fixes",
            devices=len(daemon.pipeline.keys),
            detail="unsigned, wrongly signed and replayed fixes are refused",
        )
    try:
        return asyncio.run(_main(daemon))
    except RecordError as exc:
        log.error("record_failed", error=str(exc))
        return _fail(EXIT_FAILURE, f"case record: {exc}")
    finally:
        record.close()


def _daemon_class(config) -> type[Daemon]:
    if config.cluster is None:
        return Daemon
    from tagwatch.daemon.cluster import ClusterDaemon

    return ClusterDaemon


async def _main(daemon: Daemon) -> int:
    daemon.restore()
    freeze_long_lived()
    config = daemon.config
    async with contextlib.AsyncExitStack() as stack:
        url = None
        if config.broker.embedded:
            from tagwatch.ingest.embedded_broker import EmbeddedBroker

            url = (await stack.enter_async_context(EmbeddedBroker())).url
            log.warning("embedded_broker", url=url, detail="demo only: nothing persists")
        await daemon.run(broker_settings(config, url))
    log.info("stopped")
    return EXIT_OK
