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
from tagwatch.daemon.service import (
    CasesRefused,
    Daemon,
    broker_settings,
    load_zoneset,
    summarise_notify,
)
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
    missing = missing_paths(config)  # what to create or set, before anything starts
    if missing:
        return _fail(EXIT_BAD_INPUT, f"{config.path or 'configuration'}: " + "; ".join(missing))
    logs.configure(config.log.level, config.log.json)
    log.info("config", source=str(config.path), config=config.redacted())
    summarise_notify(config)()
    try:
        zoneset, cases = load_zoneset(config.cases.path)
    except CasesRefused as exc:
        log.error("cases_refused", cases=str(config.cases.path), error=str(exc))
        return _fail(EXIT_BAD_INPUT, f"{config.cases.path}: {exc}")
    log.info("cases_loaded", cases=sorted(cases), path=str(config.cases.path))
    try:
        record = Record.open(config.record.url)
    except RecordError as exc:
        log.error("record_open_failed", error=str(exc))
        return _fail(EXIT_FAILURE, f"case record: {exc}")
    try:
        daemon = Daemon(config, record, zoneset, cases)
    except signing.KeyFileError as exc:
        record.close()
        log.error("tag_keys_refused", error=str(exc))
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


async def _main(daemon: Daemon) -> int:
    daemon.restore()
    config = daemon.config
    async with contextlib.AsyncExitStack() as stack:
        url = None
        if config.broker.embedded:
            from tagwatch.embedded_broker import EmbeddedBroker

            url = (await stack.enter_async_context(EmbeddedBroker())).url
            log.warning("embedded_broker", url=url, detail="demo only: nothing persists")
        await daemon.run(broker_settings(config, url))
    log.info("stopped")
    return EXIT_OK
