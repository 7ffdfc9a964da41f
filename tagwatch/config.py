"""The deployment configuration (DESIGN 3.6, 3.7): typed, validated once at start.

One TOML file plus environment overrides `TAGWATCH_<SECTION>_<KEY>`. Secrets
come only from the environment or from files, never from the TOML. Every error
is a ConfigError whose message names the file (or environment variable) and
the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import SplitResult, urlsplit, urlunsplit

from tagwatch.delivery_terms import redact_urls


class ConfigError(Exception):
    """A configuration problem; the message names the file or variable and the key."""


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rules:
    """Rule thresholds of DESIGN 3.6 (metres, metres/second, seconds, days)."""

    warn_m: float = 250.0
    exit_margin_m: float = 20.0
    approach_window_s: float = 180.0
    approach_max_m: float = 3000.0
    approach_min_mps: float = 1.5
    eta_max_s: float = 600.0
    eta_critical_s: float = 120.0
    mobile_radius_m: float = 500.0
    no_comms_s: float = 900.0
    no_fix_s: float = 600.0
    near_m: float = 1000.0
    max_speed_mps: float = 70.0
    battery_low_pct: float = 15.0
    loiter_m: float = 1000.0
    loiter_s: float = 900.0
    repeat_count: int = 3
    repeat_window_d: float = 7.0
    max_future_s: float = 120.0
    victim_fresh_s: float = 180.0
    repeat_gap_s: float = 3600.0
    ack_timeout_s: float = 120.0
    degraded_notify_s: float = 900.0  # protection degraded this long: the victim's notice
    follow_window_s: float = 900.0  # pattern.following: judged over this window
    follow_m: float = 1500.0  # ... the tag within this of the victim's device
    follow_min_travel_m: float = 1000.0  # ... both having moved at least this far


_RULE_TYPES: dict[str, type] = {
    f.name: int if f.type in (int, "int") else float for f in dataclasses.fields(Rules)
}
RULE_NAMES: frozenset[str] = frozenset(_RULE_TYPES)


def rules_with(base: Rules, overrides: Mapping[str, object], where: str) -> Rules:
    """A copy of `base` with `overrides` applied; errors name `where` and the key.
    No overrides: `base` itself (a caseload of 100,000 cases shares one)."""
    if not overrides:
        return base
    return _apply_rules(base, overrides, lambda key: f"{where}: {key}")


def _apply_rules(
    base: Rules, overrides: Mapping[str, object], label: Callable[[str], str]
) -> Rules:
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in RULE_NAMES:
            raise ConfigError(f"{label(key)}: unknown rule{_did_you_mean(key, RULE_NAMES)}")
        changes[key] = _rule_value(value, _RULE_TYPES[key], label(key))
    rules = dataclasses.replace(base, **changes)
    _check_rules(rules, changes.keys(), label)
    return rules


def _rule_value(value: object, kind: type, where: str) -> int | float:
    # bool is an int subclass in Python, but `true` is never a threshold.
    if isinstance(value, bool) or not isinstance(value, int | float):
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where}: expected {expected}, got {_describe(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if kind is int:
        if value != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _check_rules(rules: Rules, changed: Any, label: Callable[[str], str]) -> None:
    for name in RULE_NAMES:
        if getattr(rules, name) < 0:
            raise ConfigError(f"{label(name)}: must not be negative, got {getattr(rules, name)}")
    if rules.repeat_count < 1:
        raise ConfigError(f"{label('repeat_count')}: must be at least 1, got {rules.repeat_count}")
    if rules.battery_low_pct > 100:
        raise ConfigError(f"{label('battery_low_pct')}: must be at most 100")
    if rules.eta_critical_s > rules.eta_max_s:
        # Name the key the caller actually set, so the message points at their edit.
        if "eta_critical_s" in changed or "eta_max_s" not in changed:
            raise ConfigError(
                f"{label('eta_critical_s')}: {rules.eta_critical_s} is greater than "
                f"eta_max_s ({rules.eta_max_s})"
            )
        raise ConfigError(
            f"{label('eta_max_s')}: {rules.eta_max_s} is less than "
            f"eta_critical_s ({rules.eta_critical_s})"
        )


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BrokerConfig:
    url: str = "mqtt://127.0.0.1:1883"
    host: str = "127.0.0.1"  # "" for the embedded broker
    port: int = 1883  # 0 for the embedded broker: it picks its own
    tls: bool = False
    client_id: str = "tagwatch-1"
    topic_prefix: str = "tagwatch/v1"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    session_expiry_s: int = 86400
    keepalive_s: int = 30
    # Every node of the url, (host, port), in its order: tried in turn (a NATS cluster's
    # MQTT listeners, DESIGN 7). host and port are the first.
    nodes: tuple[tuple[str, int], ...] = (("127.0.0.1", 1883),)
    # The broker's max_packet_size in KiB (deploy/mosquitto: 1 MiB); larger publications
    # are refused before sending (kept in the record, counted), never sent to be dropped.
    max_packet_kb: int = 1024

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


@dataclass(frozen=True)
class ClusterConfig:
    """[cluster] (DESIGN 7): this process is one worker of several; None: single process."""

    worker: str
    partitions: int = 16  # K: must equal the broker's partition mapping
    partition_prefix: str = "tw/tags"  # partition p's fixes arrive on {prefix}/{p}/{tag}
    lease_ttl_s: float = 3.0


@dataclass(frozen=True)
class CasesConfig:
    path: Path = Path("config/cases")


@dataclass(frozen=True)
class RecordConfig:
    # The URL may carry a password when it comes from the environment.
    url: str = field(default="sqlite:///var/lib/tagwatch/record.db", repr=False)
    kind: Literal["sqlite", "postgresql"] = "sqlite"
    sqlite_path: Path | None = Path("/var/lib/tagwatch/record.db")
    # Fix bodies older than this are purged, except within evidence_window_h of an
    # alert of their case (the chain still verifies). 0 keeps everything.
    retention_days: float = 0.0
    evidence_window_h: float = 24.0
    # Signed checkpoints of every chain head (tagwatch/record/anchor.py), appended to this
    # file every anchor_interval_s; the key from TAGWATCH_ANCHOR_KEY(_FILE). None: off.
    anchor_path: Path | None = None
    anchor_interval_s: float = 60.0
    anchor_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class IngestConfig:
    batch_max: int = 2000
    batch_wait_ms: int = 20
    tick_s: float = 1.0
    # Per-tag (and victim device) message rate limit, a token bucket per fix topic on the
    # receiving clock (tagwatch/ingest/ratelimit.py): the excess is rejected as rate_limited.
    # tag_rate_per_s = 0 turns it off.
    tag_rate_per_s: float = 10.0
    tag_burst: int = 1000
    # The watchdog clock: "wall" in production (DESIGN 3.6); "event" drives the
    # watchdogs by the fixes' own time, as replay does, for demos and accelerated
    # simulations whose fixes carry scenario time.
    clock: str = "wall"
    # OwnTracks phones' topic prefix (DESIGN 3.1): "owntracks" takes `owntracks/USER/DEVICE`
    # as the fix of the victim whose case names `owntracks: "USER/DEVICE"`; "": off.
    owntracks_prefix: str = ""

    @property
    def rate_limit(self) -> tuple[float, int] | None:
        """(tag_rate_per_s, tag_burst), or None: no limit (a rate of 0, or the event clock,
        whose fixes come in accelerated time, faster than any tag sends them)."""
        if self.clock == "event" or self.tag_rate_per_s <= 0:
            return None
        return self.tag_rate_per_s, self.tag_burst


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    from_number: str  # the TOML key `from`
    api_base: str = "https://api.twilio.com"
    auth_token: str = field(default="", repr=False)
    # The public https address of this daemon's feed, as Twilio reaches it: delivery
    # status callbacks go to {public_url}/twilio/status, victims' SMS replies to
    # {public_url}/twilio/sms (set it as the number's messaging webhook). None: neither.
    public_url: str | None = None


@dataclass(frozen=True)
class PoliceConfig:
    webhook_url: str
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class NotifyConfig:
    twilio: TwilioConfig | None = None  # None: no SMS or calls
    police: PoliceConfig | None = None  # None: no webhook (section absent or webhook_url "")


@dataclass(frozen=True)
class FeedUser:
    name: str
    # investigator: a viewer who may also call /api/near; ingest: POST /ingest/traccar only
    role: Literal["operator", "viewer", "investigator", "ingest"]
    token_sha256: str


@dataclass(frozen=True)
class FeedConfig:
    listen: str = "127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    tile_url: str | None = None
    users: tuple[FeedUser, ...] = ()
    sse_max_clients: int = 200  # event streams at once (more: 503)
    sse_max_per_user: int = 10  # per user (more: 429)


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    json: bool = True


@dataclass(frozen=True)
class Config:
    path: Path | None = None  # the TOML file it came from, None for defaults only
    broker: BrokerConfig = BrokerConfig()
    cases: CasesConfig = CasesConfig()
    record: RecordConfig = RecordConfig()
    rules: Rules = Rules()
    ingest: IngestConfig = IngestConfig()
    notify: NotifyConfig = NotifyConfig()
    feed: FeedConfig = FeedConfig()
    log: LogConfig = LogConfig()
    cluster: ClusterConfig | None = None

    def redacted(self) -> dict[str, Any]:
        """The configuration as plain data, secrets replaced by "***" (safe to log)."""
        out = _plain(dataclasses.asdict(self))
        if self.broker.password is not None:
            out["broker"]["password"] = "***"
        out["record"]["url"] = _redact_url(self.record.url)
        if self.record.anchor_key is not None:
            out["record"]["anchor_key"] = "***"
        for name, key in (("twilio", "auth_token"), ("police", "secret")):
            if out["notify"][name] is not None:
                out["notify"][name][key] = "***"
        if out["notify"]["police"] is not None:  # a webhook URL may carry a token
            out["notify"]["police"]["webhook_url"] = redact_urls(self.notify.police.webhook_url)
        if out["notify"]["twilio"] is not None:
            out["notify"]["twilio"]["api_base"] = redact_urls(self.notify.twilio.api_base)
        if "?" in out["record"]["url"]:  # libpq takes password= in the query too
            base, _, query = out["record"]["url"].partition("?")
            out["record"]["url"] = base + redact_urls("x://?" + query)[3:]
        for user in out["feed"]["users"]:
            user["token_sha256"] = "***"
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _redact_url(url: str) -> str:
    url = re.sub(r"(password=)[^&\s]*", r"\1***", url)  # libpq's ?password=
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:  # a malformed port: redact by pattern
        return re.sub(r"(://[^:/@?#]*):[^/?#]*@", r"\1:***@", url)
    return urlunsplit(parts._replace(netloc=netloc))


# --------------------------------------------------------------------------- schema

_REQUIRED = object()
_Kind = Literal["str", "optstr", "int", "float", "bool"]

_SCHEMA: dict[str, dict[str, tuple[_Kind, object]]] = {
    "broker": {
        "url": ("str", BrokerConfig.url),
        "client_id": ("str", BrokerConfig.client_id),
        "topic_prefix": ("str", BrokerConfig.topic_prefix),
        "username": ("optstr", None),
        "password_file": ("optstr", None),
        "ca_file": ("optstr", None),
        "cert_file": ("optstr", None),
        "key_file": ("optstr", None),
        "session_expiry_s": ("int", BrokerConfig.session_expiry_s),
        "keepalive_s": ("int", BrokerConfig.keepalive_s),
        "max_packet_kb": ("int", BrokerConfig.max_packet_kb),
    },
    "cases": {"path": ("str", "config/cases")},
    "record": {
        "url": ("str", "sqlite:///var/lib/tagwatch/record.db"),
        "retention_days": ("float", RecordConfig.retention_days),
        "evidence_window_h": ("float", RecordConfig.evidence_window_h),
        "anchor_path": ("optstr", None),
        "anchor_interval_s": ("float", RecordConfig.anchor_interval_s),
    },
    "rules": {
        name: ("int" if kind is int else "float", getattr(Rules(), name))
        for name, kind in _RULE_TYPES.items()
    },
    "ingest": {
        "batch_max": ("int", IngestConfig.batch_max),
        "batch_wait_ms": ("int", IngestConfig.batch_wait_ms),
        "tick_s": ("float", IngestConfig.tick_s),
        "clock": ("str", IngestConfig.clock),
        "tag_rate_per_s": ("float", IngestConfig.tag_rate_per_s),
        "tag_burst": ("int", IngestConfig.tag_burst),
        "owntracks_prefix": ("str", IngestConfig.owntracks_prefix),
    },
    "notify.twilio": {
        "account_sid": ("str", _REQUIRED),
        "from": ("str", _REQUIRED),
        "api_base": ("str", TwilioConfig.api_base),
        "public_url": ("optstr", None),
    },
    "notify.police": {"webhook_url": ("str", "")},
    "feed": {
        "listen": ("str", FeedConfig.listen),
        "tile_url": ("optstr", None),
        "sse_max_clients": ("int", FeedConfig.sse_max_clients),
        "sse_max_per_user": ("int", FeedConfig.sse_max_per_user),
    },
    "log": {"level": ("str", "info"), "json": ("bool", True)},
    "cluster": {
        "worker": ("str", _REQUIRED),
        "partitions": ("int", ClusterConfig.partitions),
        "partition_prefix": ("str", ClusterConfig.partition_prefix),
        "lease_ttl_s": ("float", ClusterConfig.lease_ttl_s),
    },
}
_OPTIONAL_SECTIONS = frozenset({"notify.twilio", "notify.police", "cluster"})
_CONTAINERS = {"notify": ("twilio", "police")}  # tables that hold only sub-tables
_USER_KEYS = ("name", "role", "token_sha256")

BROKER_PASSWORD_ENV = "TAGWATCH_BROKER_PASSWORD"
TWILIO_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
POLICE_SECRET_ENV = "TAGWATCH_POLICE_SECRET"
USERS_ENV = "TAGWATCH_FEED_USERS"  # a JSON array of {name, role, token_sha256}
TAG_KEYS_ENV = "TAGWATCH_TAG_KEYS"  # signing keys' file or folder (tagwatch.signing.KEYS_ENV)
ANCHOR_KEY_ENVS = ("TAGWATCH_ANCHOR_KEY", "TAGWATCH_ANCHOR_KEY_FILE")  # tagwatch.record.anchor
_ENV_EXEMPT = frozenset(
    {BROKER_PASSWORD_ENV, POLICE_SECRET_ENV, TAG_KEYS_ENV, "TAGWATCH_CONFIG", *ANCHOR_KEY_ENVS}
)


def _env_name(section: str, key: str) -> str:
    return f"TAGWATCH_{section.replace('.', '_')}_{key}".upper()


_ENV_KEYS: dict[str, tuple[str, str]] = {
    _env_name(section, key): (section, key) for section, keys in _SCHEMA.items() for key in keys
}
assert len(_ENV_KEYS) == sum(map(len, _SCHEMA.values())), "two keys share an environment name"
assert not (_ENV_EXEMPT | {USERS_ENV}) & _ENV_KEYS.keys(), "a special variable shadows a key"

_SECRET_HINTS = {
    "broker": f"set {BROKER_PASSWORD_ENV} or [broker] password_file",
    "notify.twilio": f"set the environment variable {TWILIO_TOKEN_ENV}",
    "notify.police": f"set the environment variable {POLICE_SECRET_ENV}",
    "feed.users": "store only its hex SHA-256 as token_sha256",
}


def _is_secret_key(key: str) -> bool:
    return key in {"password", "secret", "token"} or key.endswith(
        ("_password", "_secret", "_token")
    )


# --------------------------------------------------------------------------- raw values


@dataclass
class _Section:
    """One section's raw values, each with where it came from (for error messages)."""

    name: str
    present: bool = False
    origin: str = ""  # the file or variable that made the section present
    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        default = _SCHEMA[self.name][key][1]
        if default is _REQUIRED:
            self.fail(key, "required when the section is present")
        return default

    def at(self, key: str) -> str:
        if key in self.where:
            return self.where[key]
        # A key left at its default is reported against the file that opened the section.
        return f"{self.origin}: [{self.name}] {key}" if self.origin else f"[{self.name}] {key}"

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.at(key)}: {problem}")


@dataclass
class _Raw:
    sections: dict[str, _Section]
    users: list[tuple[str, Any]] | None = None  # (where, entry); None: not given
    users_where: str = "[[feed.users]]"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fp:
            return tomllib.load(fp)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _scan_secrets(node: Any, src: str, section: str) -> None:
    """Refuse a secret anywhere in the file, before any other check, with where it belongs."""
    if isinstance(node, list):
        for i, item in enumerate(node, 1):
            _scan_secrets(item, src, f"{section} #{i}")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if _is_secret_key(key):
            base, _, item = section.partition(" #")
            hint = _SECRET_HINTS.get(base, "give it through the environment or a file")
            where = f"[{section}] {key}" if section else key
            if item:
                where = f"[[{base}]] #{item} {key}"
            raise ConfigError(
                f"{src}: {where}: secrets are not allowed in the configuration file; {hint}"
            )
        _scan_secrets(value, src, f"{section}.{key}" if section else key)


def _from_toml(doc: dict[str, Any], src: str) -> _Raw:
    raw = _Raw({name: _Section(name) for name in _SCHEMA})
    for name, table in doc.items():
        if name in _CONTAINERS:
            _expect_table(table, f"{src}: [{name}]")
            for sub, subtable in table.items():
                if sub not in _CONTAINERS[name]:
                    _unknown(f"{src}: [{name}] {sub}", sub, _CONTAINERS[name], "key or section")
                _take_table(raw, f"{name}.{sub}", subtable, src)
        elif name in _SCHEMA:
            _take_table(raw, name, table, src)
        else:
            _unknown(f"{src}: [{name}]", name, [*_SCHEMA, *_CONTAINERS], "section")
    return raw


def _take_table(raw: _Raw, name: str, table: Any, src: str) -> None:
    _expect_table(table, f"{src}: [{name}]")
    section = raw.sections[name]
    section.present, section.origin = True, src
    for key, value in table.items():
        where = f"{src}: [{name}] {key}"
        if name == "feed" and key == "users":
            raw.users_where = f"{src}: [[feed.users]]"
            raw.users = _users_list(value, where, raw.users_where)
            continue
        if key not in _SCHEMA[name]:
            _unknown(where, key, _SCHEMA[name], "key")
        # Rules are type-checked by _apply_rules, the same check as per-case overrides.
        if name != "rules":
            _check_type(value, _SCHEMA[name][key][0], where)
        section.values[key] = value
        section.where[key] = where


def _users_list(value: Any, where: str, base: str) -> list[tuple[str, Any]]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected an array of tables ([[feed.users]])")
    return [(f"{base} #{i}", entry) for i, entry in enumerate(value, 1)]


def _from_env(raw: _Raw, environ: Mapping[str, str]) -> None:
    for name in sorted(environ):
        text = environ[name]
        if not name.startswith("TAGWATCH_") or name in _ENV_EXEMPT:
            continue
        if name.startswith("TAGWATCH_TEST_") or name == "TAGWATCH_TESTING":
            continue  # test seams (tagwatch.pipeline.fault_marker), not configuration
        if name == USERS_ENV:
            raw.users = _users_from_json(text)
            raw.users_where = USERS_ENV
            continue
        if name not in _ENV_KEYS:
            known = [*_ENV_KEYS, USERS_ENV, *_ENV_EXEMPT]
            _unknown(name, name, known, "variable: it names no configuration key")
        section_name, key = _ENV_KEYS[name]
        section = raw.sections[section_name]
        if not section.present:
            section.present, section.origin = True, name
        section.values[key] = _convert(text, _SCHEMA[section_name][key][0], name)
        section.where[key] = name


def _users_from_json(text: str) -> list[tuple[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{USERS_ENV}: not JSON: {exc}") from None
    if not isinstance(value, list):
        raise ConfigError(f"{USERS_ENV}: expected a JSON array of users")
    return [(f"{USERS_ENV} #{i}", entry) for i, entry in enumerate(value, 1)]


def _convert(text: str, kind: _Kind, name: str) -> Any:
    if kind == "optstr":
        return text or None  # an empty variable unsets an optional key
    if kind == "str":
        return text
    if kind == "bool":
        flag = {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower())
        if flag is None:
            raise ConfigError(f'{name}: "{text}" is not a boolean (true, false, 1 or 0)')
        return flag
    try:
        number = int(text) if kind == "int" else float(text)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise ConfigError(f'{name}: "{text}" is not {what}') from None
    if not math.isfinite(number):
        raise ConfigError(f'{name}: "{text}" is not a finite number')
    return number


_KIND_NAMES = {
    "str": "a string",
    "optstr": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
}


def _check_type(value: Any, kind: _Kind, where: str) -> None:
    ok = {
        "str": isinstance(value, str),
        "optstr": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        raise ConfigError(f"{where}: expected {_KIND_NAMES[kind]}, got {_describe(value)}")


def _describe(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    name = names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)
    if isinstance(value, list):
        name = "an array"
    if isinstance(value, bool):
        return f"{name} ({str(value).lower()})"
    return f"{name} ({value!r})" if isinstance(value, int | float | str) else name


def _expect_table(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {_describe(value)}")


def _unknown(where: str, name: str, known: Any, what: str) -> NoReturn:
    raise ConfigError(f"{where}: unknown {what}{_did_you_mean(name, known)}")


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- building


def load_config(path: str | Path | None, environ: Mapping[str, str]) -> Config:
    """Read, override from `environ`, validate. `path` None: defaults plus the environment."""
    if path is None:
        raw = _Raw({name: _Section(name) for name in _SCHEMA})
    else:
        path = Path(path)
        doc = _read_toml(path)
        _scan_secrets(doc, str(path), "")
        raw = _from_toml(doc, str(path))
    _from_env(raw, environ)
    s = raw.sections
    rules = _apply_rules(Rules(), s["rules"].values, s["rules"].at)
    record = _record(s["record"], environ)
    return Config(
        path=path,
        broker=_broker(s["broker"], environ),
        cases=CasesConfig(path=Path(_nonempty(s["cases"], "path"))),
        record=record,
        rules=rules,
        ingest=_ingest(s["ingest"]),
        notify=NotifyConfig(
            twilio=_twilio(s["notify.twilio"], environ),
            police=_police(s["notify.police"], environ),
        ),
        feed=_feed(s["feed"], raw),
        log=_log(s["log"]),
        cluster=_cluster(s["cluster"], record),
    )


def _cluster(sec: _Section, record: RecordConfig) -> ClusterConfig | None:
    if not sec.present:
        return None
    worker = _nonempty(sec, "worker")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", worker):
        sec.fail("worker", f'"{worker}": use 1-64 letters, digits, _ . or - (it names topics)')
    prefix = _nonempty(sec, "partition_prefix")
    if "+" in prefix or "#" in prefix or prefix.startswith("/") or prefix.endswith("/"):
        sec.fail("partition_prefix", f'"{prefix}": no wildcard, no leading or trailing slash')
    ttl = sec.get("lease_ttl_s")
    if not (math.isfinite(ttl) and 0.5 <= ttl <= 300):
        sec.fail("lease_ttl_s", f"must be from 0.5 to 300 seconds, got {ttl}")
    if record.kind != "postgresql":
        sec.fail(
            "worker",
            'cluster mode needs a PostgreSQL record ([record] url = "postgresql://..."): '
            "the workers share it, and the leases and their fence live in it",
        )
    return ClusterConfig(
        worker=worker,
        partitions=_int_in(sec, "partitions", 1, 4096),
        partition_prefix=prefix,
        lease_ttl_s=float(ttl),
    )


def _nonempty(sec: _Section, key: str) -> str:
    value = sec.get(key)
    if not value.strip():
        sec.fail(key, "must not be empty")
    return value


def _broker(sec: _Section, environ: Mapping[str, str]) -> BrokerConfig:
    url = sec.get("url")
    nodes, tls = _broker_nodes(sec, url)
    host, port = nodes[0]
    tls_files = {key: _existing_file(sec, key) for key in ("ca_file", "cert_file", "key_file")}
    given = [key for key, value in tls_files.items() if value is not None]
    if given and not tls:
        sec.fail(given[0], "TLS files need an mqtts:// url")
    if (tls_files["cert_file"] is None) != (tls_files["key_file"] is None):
        missing = "key_file" if tls_files["key_file"] is None else "cert_file"
        sec.fail(
            given[0],
            f"a client certificate needs both cert_file and key_file; {missing} is missing",
        )
    return BrokerConfig(
        url=url,
        host=host,
        port=port,
        tls=tls,
        client_id=_nonempty(sec, "client_id"),
        topic_prefix=_topic_prefix(sec),
        username=sec.get("username"),
        password=_broker_password(sec, environ),
        session_expiry_s=_int_in(sec, "session_expiry_s", 1, 2**32 - 1),
        keepalive_s=_int_in(sec, "keepalive_s", 1, 65535),
        max_packet_kb=_int_in(sec, "max_packet_kb", 1, 256 * 1024),
        nodes=nodes,
        **tls_files,
    )


def _broker_nodes(sec: _Section, url: str) -> tuple[tuple[tuple[str, int], ...], bool]:
    """mqtt://a:1883,b:1883,c:1883 lists several nodes of one broker cluster (DESIGN 7),
    tried in turn; each is checked as a url of its own, with the first one's scheme."""
    if url == "embedded":
        return (("", 0),), False
    scheme, sep, rest = url.partition("://")
    parts = rest.split(",") if sep else [rest]
    nodes, tls = [], False
    for i, part in enumerate(parts):
        if not part and len(parts) > 1:
            sec.fail("url", f"node {i + 1} of the url is empty")
        host, port, tls = _broker_address(sec, f"{scheme}{sep}{part}")
        nodes.append((host, port))
    return tuple(nodes), tls


def _broker_address(sec: _Section, url: str) -> tuple[str, int, bool]:
    if url == "embedded":
        return "", 0, False
    parts = _split_url(sec, "url", url)
    if parts.scheme not in ("mqtt", "mqtts"):
        sec.fail(
            "url", f'scheme "{parts.scheme}" is not supported; use mqtt://, mqtts:// or "embedded"'
        )
    if parts.username is not None or parts.password is not None:
        sec.fail("url", f"credentials in the url; use [broker] username and {BROKER_PASSWORD_ENV}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        sec.fail("url", "expected mqtt://host[:port] with no path or query")
    if not parts.hostname:
        sec.fail("url", "no host in the url")
    tls = parts.scheme == "mqtts"
    return parts.hostname, _url_port(sec, "url", parts, 8883 if tls else 1883), tls


def _split_url(sec: _Section, key: str, url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        sec.fail(key, f"not a valid url: {exc}")


def _url_port(sec: _Section, key: str, parts: SplitResult, default: int) -> int:
    try:
        port = parts.port
    except ValueError:
        sec.fail(key, "the port is not a number from 0 to 65535")
    return default if port is None else port


def _topic_prefix(sec: _Section) -> str:
    prefix = _nonempty(sec, "topic_prefix")
    if "+" in prefix or "#" in prefix:
        sec.fail("topic_prefix", f'"{prefix}" contains an MQTT wildcard (+ or #)')
    if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        sec.fail("topic_prefix", f'"{prefix}" has a leading, trailing or doubled slash')
    return prefix


def _broker_password(sec: _Section, environ: Mapping[str, str]) -> str | None:
    from_env = environ.get(BROKER_PASSWORD_ENV)
    file_name = sec.get("password_file")
    if from_env is not None and file_name is not None:
        sec.fail("password_file", f"both {BROKER_PASSWORD_ENV} and password_file are set; use one")
    if file_name is None:
        return from_env or None
    try:
        text = Path(file_name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        sec.fail("password_file", f"cannot read {file_name}: {_reason(exc)}")
    password = text.rstrip("\r\n")  # editors add a final newline; it is not part of it
    if not password:
        sec.fail("password_file", f"{file_name} is empty")
    return password


def _existing_file(sec: _Section, key: str) -> Path | None:
    name = sec.get(key)
    if name is None:
        return None
    if not Path(name).is_file():
        sec.fail(key, f"{name}: no such file")
    return Path(name)


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _int_in(sec: _Section, key: str, low: int, high: int) -> int:
    value = sec.get(key)
    if not low <= value <= high:
        sec.fail(key, f"must be from {low} to {high}, got {value}")
    return value


def _record(sec: _Section, environ: Mapping[str, str]) -> RecordConfig:
    from tagwatch.record.anchor import AnchorError, load_key

    retention = {}
    for key in ("retention_days", "evidence_window_h"):
        value = sec.get(key)
        if not math.isfinite(value) or value < 0:
            sec.fail(key, f"must be a number >= 0, got {value}")
        retention[key] = float(value)
    interval = sec.get("anchor_interval_s")
    if not interval > 0:
        sec.fail("anchor_interval_s", f"must be above 0, got {interval}")
    try:
        key = load_key(environ)
    except AnchorError as exc:
        raise ConfigError(str(exc)) from None
    path = sec.get("anchor_path")
    if path is not None and key is None:
        sec.fail("anchor_path", f"needs the anchor key: set {' or '.join(ANCHOR_KEY_ENVS)}")
    return replace(
        _record_url(sec),
        **retention,
        anchor_path=None if path is None else Path(path),
        anchor_interval_s=float(interval),
        anchor_key=key,
    )


def _record_url(sec: _Section) -> RecordConfig:
    url = sec.get("url")
    if url.startswith("sqlite:///"):
        # sqlite:///var/lib/x.db names /var/lib/x.db, as a file:/// URL would.
        path = url[len("sqlite://") :]
        if path == "/":
            sec.fail("url", "no database file after sqlite:///")
        return RecordConfig(url=url, kind="sqlite", sqlite_path=Path(path))
    parts = _split_url(sec, "url", url)
    if parts.scheme not in ("postgresql", "postgres"):
        sec.fail("url", "expected sqlite:///PATH, postgresql:// or postgres://")
    # A password may come from the environment, never from the file.
    if parts.password is not None and sec.at("url") != _env_name("record", "url"):
        sec.fail(
            "url",
            "a password in the url; give it through PGPASSWORD, ~/.pgpass or "
            "TAGWATCH_RECORD_URL instead",
        )
    return RecordConfig(url=url, kind="postgresql", sqlite_path=None)


def _ingest(sec: _Section) -> IngestConfig:
    tick_s = sec.get("tick_s")
    if not tick_s > 0:
        sec.fail("tick_s", f"must be above 0, got {tick_s}")
    clock = sec.get("clock")
    if clock not in ("wall", "event"):
        sec.fail("clock", f'must be "wall" or "event", got {clock!r}')
    rate = sec.get("tag_rate_per_s")
    if not (math.isfinite(rate) and rate >= 0):
        sec.fail("tag_rate_per_s", f"must be 0 (no limit) or above, got {rate}")
    owntracks = sec.get("owntracks_prefix")
    if owntracks and (
        owntracks[0] == "/" or owntracks[-1] == "/" or any(c in owntracks for c in "+#\x00")
    ):
        sec.fail(
            "owntracks_prefix",
            f"must be empty (off) or a topic prefix without a leading or trailing '/' and "
            f"without '+', '#' or NUL, got {owntracks!r}",
        )
    return IngestConfig(
        batch_max=_int_in(sec, "batch_max", 1, 1_000_000),
        batch_wait_ms=_int_in(sec, "batch_wait_ms", 0, 60_000),
        tick_s=float(tick_s),
        clock=clock,
        tag_rate_per_s=float(rate),
        tag_burst=_int_in(sec, "tag_burst", 1, 1_000_000),
        owntracks_prefix=owntracks,
    )


_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


def _twilio(sec: _Section, environ: Mapping[str, str]) -> TwilioConfig | None:
    if not sec.present:
        return None
    sid = sec.get("account_sid")
    if not sid.startswith("AC"):
        sec.fail("account_sid", f'"{sid}" is not an account SID (it starts with "AC")')
    sender = sec.get("from")
    if not _E164.fullmatch(sender):
        sec.fail("from", f'"{sender}" is not an E.164 number (like +447700900000)')
    token = environ.get(TWILIO_TOKEN_ENV, "")
    if not token:
        raise ConfigError(
            f"{sec.origin}: [notify.twilio]: the auth token must come from the environment "
            f"variable {TWILIO_TOKEN_ENV}, which is not set"
        )
    return TwilioConfig(
        account_sid=sid,
        from_number=sender,
        api_base=_http_url(sec, "api_base").rstrip("/"),
        auth_token=token,
        public_url=_http_url(sec, "public_url").rstrip("/") if sec.get("public_url") else None,
    )


def _police(sec: _Section, environ: Mapping[str, str]) -> PoliceConfig | None:
    if not sec.present or not sec.get("webhook_url"):
        return None
    url = _http_url(sec, "webhook_url")
    secret = environ.get(POLICE_SECRET_ENV, "")
    if not secret:
        sec.fail(
            "webhook_url",
            f"the environment variable {POLICE_SECRET_ENV} must be set "
            "(the HMAC key that signs each webhook) when webhook_url is set",
        )
    return PoliceConfig(webhook_url=url, secret=secret)


def _http_url(sec: _Section, key: str) -> str:
    url = sec.get(key)
    parts = _split_url(sec, key, url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        sec.fail(key, f'"{url}" is not an http:// or https:// url')
    _url_port(sec, key, parts, 0)
    return url


def _feed(sec: _Section, raw: _Raw) -> FeedConfig:
    listen = sec.get("listen")
    host, sep, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:8080
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        sec.fail("listen", f'"{listen}" is not HOST:PORT (like 127.0.0.1:8080)')
    tile_url = sec.get("tile_url")
    if tile_url is not None:
        _http_url(sec, "tile_url")
    users = tuple(_user(where, entry) for where, entry in raw.users or [])
    _check_unique_users(users, raw.users_where)
    return FeedConfig(
        listen=listen,
        host=host,
        port=int(port_text),
        tile_url=tile_url,
        users=users,
        sse_max_clients=_int_in(sec, "sse_max_clients", 1, 100_000),
        sse_max_per_user=_int_in(sec, "sse_max_per_user", 1, 100_000),
    )


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _user(where: str, entry: Any) -> FeedUser:
    _expect_table(entry, where)
    for key in entry:
        if key not in _USER_KEYS:
            hint = f"; {_SECRET_HINTS['feed.users']}" if _is_secret_key(key) else ""
            raise ConfigError(f"{where} {key}: unknown key{_did_you_mean(key, _USER_KEYS)}{hint}")
    for key in _USER_KEYS:
        if key not in entry:
            raise ConfigError(f"{where} {key}: required")
        _check_type(entry[key], "str", f"{where} {key}")
    if not entry["name"].strip():
        raise ConfigError(f"{where} name: must not be empty")
    if entry["role"] not in ("operator", "viewer", "investigator", "ingest"):
        raise ConfigError(
            f'{where} role: "{entry["role"]}" is not operator, viewer, investigator or ingest'
        )
    if not _SHA256_HEX.fullmatch(entry["token_sha256"]):
        raise ConfigError(
            f"{where} token_sha256: expected 64 lowercase hex characters "
            "(the SHA-256 of the bearer token)"
        )
    return FeedUser(name=entry["name"], role=entry["role"], token_sha256=entry["token_sha256"])


def _check_unique_users(users: tuple[FeedUser, ...], where: str) -> None:
    names: set[str] = set()
    hashes: set[str] = set()
    for i, user in enumerate(users, 1):
        if user.name in names:
            raise ConfigError(f'{where} #{i} name: "{user.name}" is given twice')
        if user.token_sha256 in hashes:
            raise ConfigError(f"{where} #{i} token_sha256: two users share one token")
        names.add(user.name)
        hashes.add(user.token_sha256)


def _log(sec: _Section) -> LogConfig:
    level = sec.get("level").lower()
    if level not in ("debug", "info", "warning", "error"):
        sec.fail("level", f'"{level}" is not debug, info, warning or error')
    return LogConfig(level=level, json=sec.get("json"))


def missing_paths(config: Config, cases: bool = True) -> list[str]:
    """What the configuration names that is not there, one message per key saying what to
    create or set: the cases path (unless `cases` is false) and the folder of a SQLite
    record. A relative path is taken from the working directory, which the message names."""
    problems = []
    path = config.cases.path
    if cases and not path.exists():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        problems.append(
            f"[cases] path: {path}{where} does not exist: create it and put the case files "
            "in it, or set [cases] path (TAGWATCH_CASES_PATH)"
        )
    url = config.record.url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        folder = Path(url.removeprefix("sqlite://")).parent
        if not folder.is_dir():
            problems.append(
                f"[record] url: the folder {folder} of the SQLite record does not exist: "
                f"create it (install -d -m 0750 {folder}) or set [record] url "
                "(TAGWATCH_RECORD_URL)"
            )
    return problems
