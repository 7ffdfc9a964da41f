"""Structured logs (structlog, JSON lines) with victim data redacted in one place.

`redact_victim_data` is the only redaction processor. It runs on every event, ours and
the standard library's (paho, uvicorn, asyncio) alike, after exception formatting, so a
traceback is redacted too. It removes:
- the values of keys that hold victim data or positions (phone, to, target, lat, lon,
  coordinates, geometry, ...), wherever they are nested;
- E.164 phone numbers inside any string;
- decimal numbers written like coordinates (3 or more decimals, at most 3 integer
  digits) inside any string: a case-file error or a payload excerpt can quote a zone
  vertex or a victim device position.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
SENSITIVE_KEYS = frozenset(
    {
        "phone",
        "to",
        "from_",
        "target",
        "lat",
        "lon",
        "latitude",
        "longitude",
        "position",
        "coordinates",
        "geometry",
        "victim_lat",
        "victim_lon",
        "payload",
    }
)
_E164 = re.compile(r"\+[1-9]\d{6,14}")
# -0.128, 51.5073, 51.50721: not a timestamp's fraction (30.405Z) nor part of a longer number
_COORDINATE = re.compile(r"(?<![\w.])-?\d{1,3}\.\d{3,}(?![\w.])")


def redact_text(text: str) -> str:
    return _COORDINATE.sub(REDACTED, _E164.sub(REDACTED, text))


def _clean(key: str, value: Any) -> Any:
    if key.lower() in SENSITIVE_KEYS and value is not None:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(key, v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


def redact_victim_data(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The redaction processor (see the module docstring)."""
    return {key: _clean(key, value) for key, value in event.items()}


def configure(level: str = "info", json: bool = True) -> None:
    """Route structlog and the standard library's logging through one chain to stderr."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_victim_data,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho's packet trace is DEBUG noise even at debug level; uvicorn logs its own start
    logging.getLogger("paho.mqtt").setLevel(max(logging.INFO, root.level))
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))
