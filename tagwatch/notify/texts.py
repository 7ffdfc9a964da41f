"""Victim-facing texts: short, plain, per language, overridable per case.

A template may use only the placeholders in PLACEHOLDERS, none of which can carry
a position, an address or a phone number: the alert reference and the emergency
number. So whatever a case overrides, the text cannot leak victim or offender data
that the alert record holds.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

PLACEHOLDERS = frozenset({"ref", "emergency"})
KEYS = (
    "zone.breach",
    "proximity",
    "approach",
    "curfew.breach",
    "summary",
    "call",
    "ack",
    "protection.degraded",
    "protection.restored",
)
DEFAULT_LANGUAGE = "en"
DEFAULT_EMERGENCY = "999"

# Each SMS fits one 160-character GSM segment once rendered (tests check it).
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "zone.breach": "Tagwatch alert {ref}: the person you are protected from has entered "
        "a zone they must keep out of. Police are told. In danger? Call {emergency}.",
        "proximity": "Tagwatch alert {ref}: the person you are protected from is near you. "
        "Police are told. In danger? Call {emergency}.",
        "approach": "Tagwatch alert {ref}: the person you are protected from is heading "
        "your way. Police are told. In danger? Call {emergency}.",
        "curfew.breach": "Tagwatch alert {ref}: the person you are protected from has broken "
        "their curfew. Police are told. In danger? Call {emergency}.",
        "summary": "Tagwatch {ref}: more alerts were raised for you. Police control is "
        "following them. In danger? Call {emergency}.",
        "call": "This is Tagwatch with an urgent safety alert, reference {ref}. Nobody has "
        "confirmed the alert yet. If you are in danger, call {emergency} now. "
        "Reply to our text message to confirm you are safe.",
        "ack": "Tagwatch {ref}: thank you, your reply is noted. In danger? Call {emergency}.",
        "protection.degraded": "Tagwatch {ref}: your protection is reduced for now (tag or "
        "phone not reporting). Police control knows. Stay alert. In danger? Call {emergency}.",
        "protection.restored": "Tagwatch {ref}: your protection is working normally again. "
        "In danger? Call {emergency}.",
    },
}

# Twilio <Say> language per text language.
SAY_LANGUAGES = {"en": "en-GB"}


class TextError(ValueError):
    """A template set that cannot be used; the message names the case and key."""


def check_templates(templates: Mapping[str, str], where: str) -> None:
    """Refuse unknown keys and placeholders outside PLACEHOLDERS; `where` names the source."""
    for key, template in templates.items():
        if key not in KEYS:
            raise TextError(f"{where}: text {key!r}: unknown key (known: {', '.join(KEYS)})")
        if not isinstance(template, str) or not template.strip():
            raise TextError(f"{where}: text {key!r}: must be a non-empty string")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        except ValueError as exc:
            raise TextError(f"{where}: text {key!r}: bad template: {exc}") from None
        unknown = fields - PLACEHOLDERS
        if unknown:
            raise TextError(
                f"{where}: text {key!r}: placeholder {sorted(unknown)[0]!r} is not allowed "
                f"(allowed: {', '.join(sorted(PLACEHOLDERS))})"
            )


def reference(alert_id: str) -> str:
    """The short alert reference a victim sees: the first 6 characters of the id."""
    return alert_id[:6].upper()


def spoken(ref: str) -> str:
    """A reference spelled out for <Say>: one character at a time."""
    return " ".join(ref)


def render(
    key: str,
    alert_id: str,
    language: str = DEFAULT_LANGUAGE,
    overrides: Mapping[str, str] | None = None,
    emergency: str = DEFAULT_EMERGENCY,
) -> str:
    """The text `key` for one alert: the case's override, else the language's, else English."""
    template = (overrides or {}).get(key)
    if template is None:
        template = TEXTS.get(language, TEXTS[DEFAULT_LANGUAGE]).get(key)
    if template is None:
        template = TEXTS[DEFAULT_LANGUAGE][key]
    ref = reference(alert_id)
    return template.format(ref=spoken(ref) if key == "call" else ref, emergency=emergency)
