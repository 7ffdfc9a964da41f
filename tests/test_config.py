"""Configuration: defaults, the example file, overrides, and every refusal naming its key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from tagwatch.config import (
    RULE_NAMES,
    BrokerConfig,
    Config,
    ConfigError,
    FeedUser,
    Rules,
    load_config,
    rules_with,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "tagwatch.example.toml"
HASH = hashlib.sha256(b"operator-token").hexdigest()
TWILIO = '[notify.twilio]\naccount_sid = "AC0123"\nfrom = "+447700900000"\n'


def write(tmp_path: Path, text: str, name: str = "tagwatch.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return str(info.value)


# --------------------------------------------------------------------------- defaults


def test_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.path is None
    broker = config.broker
    assert (broker.url, broker.host, broker.port, broker.tls) == (
        "mqtt://127.0.0.1:1883",
        "127.0.0.1",
        1883,
        False,
    )
    assert (broker.client_id, broker.topic_prefix) == ("tagwatch-1", "tagwatch/v1")
    assert broker.username is None and broker.password is None
    assert (broker.session_expiry_s, broker.keepalive_s) == (86400, 30)
    assert config.cases.path == Path("config/cases")
    assert config.record.kind == "sqlite"
    assert config.record.sqlite_path == Path("/var/lib/tagwatch/record.db")
    assert (config.ingest.batch_max, config.ingest.batch_wait_ms, config.ingest.tick_s) == (
        2000,
        20,
        1.0,
    )
    assert config.notify.twilio is None and config.notify.police is None
    assert (config.feed.host, config.feed.port, config.feed.users) == ("127.0.0.1", 8080, ())
    assert (config.log.level, config.log.json) == ("info", True)


def test_rule_defaults_match_design_3_6() -> None:
    expected = {
        "warn_m": 250, "exit_margin_m": 20, "approach_window_s": 180, "approach_max_m": 3000,
        "approach_min_mps": 1.5, "eta_max_s": 600, "eta_critical_s": 120, "mobile_radius_m": 500,
        "no_comms_s": 900, "no_fix_s": 600, "near_m": 1000, "max_speed_mps": 70,
        "battery_low_pct": 15, "loiter_m": 1000, "loiter_s": 900, "repeat_count": 3,
        "repeat_window_d": 7, "max_future_s": 120, "victim_fresh_s": 180, "repeat_gap_s": 3600,
        "ack_timeout_s": 120, "degraded_notify_s": 900, "follow_window_s": 900, "follow_m": 1500,
        "follow_min_travel_m": 1000,
    }  # fmt: skip
    assert dataclasses.asdict(Rules()) == expected
    assert expected.keys() == RULE_NAMES
    assert type(Rules().repeat_count) is int
    assert all(
        type(v) is float for k, v in dataclasses.asdict(Rules()).items() if k != "repeat_count"
    )


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_config(path, {}) == dataclasses.replace(Config(), path=path)


# --------------------------------------------------------------------------- example file


def test_the_example_file_loads() -> None:
    config = load_config(EXAMPLE, {})
    assert config.path == EXAMPLE
    assert config.rules == Rules()
    assert config.cases.path == Path("config/cases")
    assert config.record.url == "sqlite:///var/lib/tagwatch/record.db"
    assert config.notify.twilio is None
    assert config.notify.police is None  # webhook_url = ""
    token_hash = hashlib.sha256(b"example-operator-token").hexdigest()
    assert config.feed.users == (FeedUser("duty-operator", "operator", token_hash),)


def test_the_example_twilio_block_loads_when_uncommented(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# [notify.twilio]")
    end = lines.index("", start)
    lines[start:end] = [line.removeprefix("# ") for line in lines[start:end]]
    path = write(tmp_path, "\n".join(lines))
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        load_config(path, {})
    twilio = load_config(path, {"TWILIO_AUTH_TOKEN": "tok"}).notify.twilio
    assert twilio is not None
    assert twilio.account_sid == "AC00000000000000000000000000000000"
    assert (twilio.from_number, twilio.api_base, twilio.auth_token) == (
        "+447700900000",
        "https://api.twilio.com",
        "tok",
    )


# --------------------------------------------------------------------------- overrides


def test_toml_overrides_defaults_and_env_overrides_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[broker]\nurl = "mqtt://broker.local:1884"\nkeepalive_s = 10\n'
        "[rules]\nwarn_m = 300\nrepeat_count = 4\n"
        '[feed]\nlisten = "0.0.0.0:9000"\n'
        "[log]\njson = false\n" + TWILIO,
    )
    environ = {"TWILIO_AUTH_TOKEN": "tok"}
    config = load_config(path, environ)
    assert (config.broker.host, config.broker.port, config.broker.keepalive_s) == (
        "broker.local",
        1884,
        10,
    )
    assert (config.rules.warn_m, config.rules.repeat_count) == (300.0, 4)
    assert (config.feed.host, config.feed.port) == ("0.0.0.0", 9000)
    assert config.log.json is False

    environ |= {
        "TAGWATCH_BROKER_URL": "mqtts://secure.local",
        "TAGWATCH_BROKER_KEEPALIVE_S": "45",
        "TAGWATCH_RULES_WARN_M": "350.5",
        "TAGWATCH_RULES_REPEAT_COUNT": "5",
        "TAGWATCH_FEED_LISTEN": "[::1]:9100",
        "TAGWATCH_LOG_JSON": "1",
        "TAGWATCH_NOTIFY_TWILIO_API_BASE": "http://127.0.0.1:4010/",
    }
    config = load_config(path, environ)
    assert (config.broker.host, config.broker.port, config.broker.tls) == (
        "secure.local",
        8883,
        True,
    )
    assert config.broker.keepalive_s == 45
    assert (config.rules.warn_m, config.rules.repeat_count) == (350.5, 5)
    assert (config.feed.host, config.feed.port) == ("::1", 9100)
    assert config.log.json is True
    assert config.notify.twilio is not None
    assert config.notify.twilio.api_base == "http://127.0.0.1:4010"


def test_env_alone_overrides_defaults() -> None:
    config = load_config(
        None,
        {
            "TAGWATCH_CASES_PATH": "/srv/cases",
            "TAGWATCH_RECORD_URL": "postgresql://postgres@127.0.0.1:5432/test",
            "TAGWATCH_INGEST_TICK_S": "0.5",
            "TAGWATCH_LOG_LEVEL": "DEBUG",
            "TAGWATCH_BROKER_USERNAME": "tagwatch",
            "TAGWATCH_FEED_TILE_URL": "https://tiles.example/{z}/{x}/{y}.png",
        },
    )
    assert config.cases.path == Path("/srv/cases")
    assert (config.record.kind, config.record.sqlite_path) == ("postgresql", None)
    assert config.ingest.tick_s == 0.5
    assert config.log.level == "debug"
    assert config.broker.username == "tagwatch"
    assert config.feed.tile_url == "https://tiles.example/{z}/{x}/{y}.png"


def test_an_empty_env_value_unsets_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nusername = "tagwatch"\n')
    assert load_config(path, {"TAGWATCH_BROKER_USERNAME": ""}).broker.username is None


def test_env_can_add_an_optional_section() -> None:
    config = load_config(
        None,
        {
            "TAGWATCH_NOTIFY_POLICE_WEBHOOK_URL": "https://police.example/hook",
            "TAGWATCH_POLICE_SECRET": "hmac-key",
        },
    )
    assert config.notify.police is not None
    assert config.notify.police.webhook_url == "https://police.example/hook"
    assert config.notify.police.secret == "hmac-key"


def test_feed_users_from_env_json() -> None:
    users = [{"name": "viewer-1", "role": "viewer", "token_sha256": HASH}]
    config = load_config(None, {"TAGWATCH_FEED_USERS": json.dumps(users)})
    assert config.feed.users == (FeedUser("viewer-1", "viewer", HASH),)


def test_exempt_environment_variables_are_ignored() -> None:
    environ = {
        "TAGWATCH_TEST_BROKER": "mqtt://127.0.0.1:1883",
        "TAGWATCH_TEST_POSTGRES": "postgresql://postgres@127.0.0.1:5432/test",
        "TAGWATCH_CONFIG": "/etc/tagwatch.toml",
        "TAGWATCH_POLICE_SECRET": "unused without a webhook",
        "HOME": "/root",
    }
    assert load_config(None, environ) == Config()


# --------------------------------------------------------------------------- secrets


def test_broker_password_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nusername = "tagwatch"\n')
    config = load_config(path, {"TAGWATCH_BROKER_PASSWORD": "s3cret"})
    assert config.broker.password == "s3cret"


def test_broker_password_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n", encoding="utf-8")
    path = write(tmp_path, f'[broker]\nusername = "tagwatch"\npassword_file = "{secret}"\n')
    assert load_config(path, {}).broker.password == "from-file"


def test_broker_password_file_missing(tmp_path: Path) -> None:
    message = refused(tmp_path, f'[broker]\npassword_file = "{tmp_path / "nope"}"\n')
    assert "tagwatch.toml: [broker] password_file: cannot read" in message


def test_broker_password_twice_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("x", encoding="utf-8")
    message = refused(
        tmp_path, f'[broker]\npassword_file = "{secret}"\n', {"TAGWATCH_BROKER_PASSWORD": "y"}
    )
    assert "[broker] password_file: both TAGWATCH_BROKER_PASSWORD and password_file" in message


@pytest.mark.parametrize(
    ("text", "location", "hint"),
    [
        ('[broker]\npassword = "x"\n', "[broker] password", "TAGWATCH_BROKER_PASSWORD"),
        (TWILIO + 'auth_token = "x"\n', "[notify.twilio] auth_token", "TWILIO_AUTH_TOKEN"),
        ('[notify.police]\nsecret = "x"\n', "[notify.police] secret", "TAGWATCH_POLICE_SECRET"),
        (
            '[[feed.users]]\nname = "a"\nrole = "viewer"\ntoken = "x"\n',
            "[[feed.users]] #1 token",
            "token_sha256",
        ),
        ('[broker]\napi_token = "x"\n', "[broker] api_token", "TAGWATCH_BROKER_PASSWORD"),
        ('[other]\nsecret = "x"\n', "[other] secret", "environment"),
    ],
)
def test_a_secret_in_the_toml_is_refused(
    tmp_path: Path, text: str, location: str, hint: str
) -> None:
    message = refused(tmp_path, text, {"TWILIO_AUTH_TOKEN": "tok"})
    assert message.startswith(f"{tmp_path / 'tagwatch.toml'}: {location}: secrets are not allowed")
    assert hint in message


def test_missing_twilio_auth_token(tmp_path: Path) -> None:
    message = refused(tmp_path, TWILIO, {"TWILIO_AUTH_TOKEN": ""})
    assert "tagwatch.toml: [notify.twilio]" in message
    assert "TWILIO_AUTH_TOKEN" in message and "not set" in message


def test_missing_police_secret(tmp_path: Path) -> None:
    message = refused(tmp_path, '[notify.police]\nwebhook_url = "https://police.example/h"\n')
    assert "tagwatch.toml: [notify.police] webhook_url:" in message
    assert "TAGWATCH_POLICE_SECRET" in message


def test_record_password_only_from_env(tmp_path: Path) -> None:
    url = "postgresql://tw:pw@db.local:5432/tagwatch"
    message = refused(tmp_path, f'[record]\nurl = "{url}"\n')
    assert "tagwatch.toml: [record] url: a password in the url" in message
    assert load_config(None, {"TAGWATCH_RECORD_URL": url}).record.url == url


def test_redacted_hides_every_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        TWILIO
        + '[notify.police]\nwebhook_url = "https://police.example/hook"\n'
        + f'[[feed.users]]\nname = "op"\nrole = "operator"\ntoken_sha256 = "{HASH}"\n',
    )
    environ = {
        "TWILIO_AUTH_TOKEN": "twilio-SECRET",
        "TAGWATCH_POLICE_SECRET": "police-SECRET",
        "TAGWATCH_BROKER_PASSWORD": "broker-SECRET",
        "TAGWATCH_RECORD_URL": "postgresql://tw:db-SECRET@db.local:5432/tagwatch",
    }
    config = load_config(path, environ)
    shown = config.redacted()
    text = json.dumps(shown)  # also proves it is plain data, fit for a JSON log line
    assert "SECRET" not in text and HASH not in text
    assert shown["broker"]["password"] == "***"
    assert shown["notify"]["twilio"]["auth_token"] == "***"
    assert shown["notify"]["police"]["secret"] == "***"
    assert shown["record"]["url"] == "postgresql://tw:***@db.local:5432/tagwatch"
    assert shown["feed"]["users"][0] == {"name": "op", "role": "operator", "token_sha256": "***"}
    assert shown["notify"]["twilio"]["account_sid"] == "AC0123"
    assert "SECRET" not in repr(config)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[broker]\nport = 1883\n", "[broker] port: unknown key"),
        ("[brokers]\nurl = 'x'\n", "[brokers]: unknown section (did you mean 'broker'?)"),
        ("[notify.sms]\nx = 1\n", "[notify] sms: unknown key or section"),
        ("[notify]\nx = 1\n", "[notify] x: unknown key"),
        ("title = 'x'\n", "[title]: unknown section"),
        ("[rules]\nwarn_metres = 3\n", "[rules] warn_metres: unknown key (did you mean 'warn_m'?)"),
        (
            "[broker]\nkeepalive_s = '30'\n",
            "[broker] keepalive_s: expected an integer, got a string",
        ),
        ("[broker]\nsession_expiry_s = 1.5\n", "[broker] session_expiry_s: expected an integer"),
        ("[broker]\nsession_expiry_s = 0\n", "[broker] session_expiry_s: must be from 1"),
        ("[log]\njson = 'yes'\n", "[log] json: expected a boolean, got a string"),
        ("[log]\nlevel = 'loud'\n", '[log] level: "loud" is not debug'),
        ("[ingest]\ntick_s = true\n", "[ingest] tick_s: expected a number, got a boolean (true)"),
        ("[ingest]\ntick_s = 0\n", "[ingest] tick_s: must be above 0"),
        ("[ingest]\nbatch_max = 0\n", "[ingest] batch_max: must be from 1"),
        ("[cases]\npath = ['a']\n", "[cases] path: expected a string, got an array"),
        ("[cases]\npath = ''\n", "[cases] path: must not be empty"),
        ("broker = 5\n", "[broker]: expected a table"),
        ("[rules]\nwarn_m = 'far'\n", "[rules] warn_m: expected a number, got a string"),
        ("[rules]\nwarn_m = -1\n", "[rules] warn_m: must not be negative"),
        ("[rules]\nrepeat_count = 2.5\n", "[rules] repeat_count: expected an integer"),
        (
            "[rules]\neta_critical_s = 700\n",
            "[rules] eta_critical_s: 700.0 is greater than eta_max_s",
        ),
        ("[broker]\nurl = 'http://broker:1883'\n", '[broker] url: scheme "http" is not supported'),
        ("[broker]\nurl = 'mqtt://'\n", "[broker] url: no host"),
        ("[broker]\nurl = 'mqtt://h:99999'\n", "[broker] url: the port is not a number"),
        ("[broker]\nurl = 'mqtt://u:p@h'\n", "[broker] url: credentials in the url"),
        ("[broker]\nurl = 'mqtt://h/x'\n", "[broker] url: expected mqtt://host[:port]"),
        ("[broker]\ntopic_prefix = 'tagwatch/#'\n", '[broker] topic_prefix: "tagwatch/#" contains'),
        ("[broker]\ntopic_prefix = '/tagwatch'\n", '[broker] topic_prefix: "/tagwatch" has a lead'),
        ("[broker]\ntopic_prefix = 'tagwatch/'\n", '[broker] topic_prefix: "tagwatch/" has a lead'),
        (
            f"[broker]\nca_file = '{EXAMPLE}'\n",
            "[broker] ca_file: TLS files need an mqtts:// url",
        ),
        (
            "[broker]\nurl = 'mqtts://h'\nca_file = '/no/such/ca.pem'\n",
            "[broker] ca_file: /no/such/ca.pem: no such file",
        ),
        (
            "[record]\nurl = 'mysql://h/db'\n",
            "[record] url: expected sqlite:///PATH, postgresql://",
        ),
        ("[record]\nurl = 'sqlite:///'\n", "[record] url: no database file"),
        ("[notify.twilio]\nfrom = '+447700900000'\n", "[notify.twilio] account_sid: required"),
        (
            "[notify.twilio]\naccount_sid = 'SK1'\nfrom = '+447700900000'\n",
            '[notify.twilio] account_sid: "SK1" is not an account SID',
        ),
        (
            "[notify.twilio]\naccount_sid = 'AC1'\nfrom = '07700900000'\n",
            '[notify.twilio] from: "07700900000" is not an E.164 number',
        ),
        (TWILIO + "api_base = 'ftp://x'\n", '[notify.twilio] api_base: "ftp://x" is not an http'),
        (
            "[notify.police]\nwebhook_url = 'police'\n",
            '[notify.police] webhook_url: "police" is not',
        ),
        ("[feed]\nlisten = '8080'\n", '[feed] listen: "8080" is not HOST:PORT'),
        ("[feed]\nlisten = 'localhost:http'\n", '[feed] listen: "localhost:http" is not HOST:PORT'),
        ("[feed]\ntile_url = 'tiles/{z}'\n", '[feed] tile_url: "tiles/{z}" is not an http'),
        ("[feed]\nusers = 'admin'\n", "[feed] users: expected an array of tables"),
        (
            f"[[feed.users]]\nname = 'a'\nrole = 'admin'\ntoken_sha256 = '{HASH}'\n",
            '[[feed.users]] #1 role: "admin" is not operator, viewer, investigator or ingest',
        ),
        (
            "[[feed.users]]\nname = 'a'\nrole = 'viewer'\ntoken_sha256 = 'abc'\n",
            "[[feed.users]] #1 token_sha256: expected 64 lowercase hex characters",
        ),
        (
            f"[[feed.users]]\nname = 'a'\nrole = 'viewer'\ntoken_sha256 = '{HASH.upper()}'\n",
            "[[feed.users]] #1 token_sha256: expected 64 lowercase hex",
        ),
        (
            "[[feed.users]]\nname = 'a'\nrole = 'viewer'\n",
            "[[feed.users]] #1 token_sha256: required",
        ),
        (
            f"[[feed.users]]\nname = 'a'\nrole = 'viewer'\ntoken_sha256 = '{HASH}'\ngroup = 1\n",
            "[[feed.users]] #1 group: unknown key",
        ),
        (
            f"[[feed.users]]\nname = 'a'\nrole = 'viewer'\ntoken_sha256 = '{HASH}'\n"
            f"[[feed.users]]\nname = 'a'\nrole = 'operator'\ntoken_sha256 = '{'0' * 64}'\n",
            '[[feed.users]] #2 name: "a" is given twice',
        ),
    ],
)
def test_a_bad_file_is_refused_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = refused(tmp_path, text, {"TWILIO_AUTH_TOKEN": "tok"})
    assert message.startswith(f"{tmp_path / 'tagwatch.toml'}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TAGWATCH_BROKER_PORT": "1883"}, "TAGWATCH_BROKER_PORT: unknown variable"),
        ({"TAGWATCH_RULES_WARN_MM": "3"}, "(did you mean 'TAGWATCH_RULES_WARN_M'?)"),
        ({"TAGWATCH_RULES_WARN_M": "abc"}, 'TAGWATCH_RULES_WARN_M: "abc" is not a number'),
        ({"TAGWATCH_RULES_WARN_M": "nan"}, 'TAGWATCH_RULES_WARN_M: "nan" is not a finite number'),
        ({"TAGWATCH_RULES_REPEAT_COUNT": "2.5"}, 'REPEAT_COUNT: "2.5" is not an integer'),
        ({"TAGWATCH_RULES_REPEAT_COUNT": "0"}, "TAGWATCH_RULES_REPEAT_COUNT: must be at least 1"),
        ({"TAGWATCH_BROKER_KEEPALIVE_S": "thirty"}, '_KEEPALIVE_S: "thirty" is not an integer'),
        ({"TAGWATCH_LOG_JSON": "yes"}, 'TAGWATCH_LOG_JSON: "yes" is not a boolean'),
        ({"TAGWATCH_BROKER_URL": "tcp://h"}, 'TAGWATCH_BROKER_URL: scheme "tcp" is not supported'),
        ({"TAGWATCH_FEED_USERS": "{"}, "TAGWATCH_FEED_USERS: not JSON"),
        (
            {"TAGWATCH_FEED_USERS": '[{"name": "a", "role": "boss", "token_sha256": "x"}]'},
            'TAGWATCH_FEED_USERS #1 role: "boss" is not operator, viewer, investigator or ingest',
        ),
        (
            {"TAGWATCH_NOTIFY_TWILIO_API_BASE": "http://127.0.0.1:1"},
            "TAGWATCH_NOTIFY_TWILIO_API_BASE: [notify.twilio] account_sid: required",
        ),
    ],
)
def test_a_bad_environment_is_refused_naming_the_variable(
    environ: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ)
    assert expected in str(info.value)


def test_env_error_wins_over_a_good_toml_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[rules]\nwarn_m = 300\n")
    with pytest.raises(ConfigError, match=r"^TAGWATCH_RULES_WARN_M: must not be negative"):
        load_config(path, {"TAGWATCH_RULES_WARN_M": "-5"})
    assert load_config(path, {"TAGWATCH_RULES_WARN_M": "5"}).rules.warn_m == 5.0


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = refused(tmp_path, '[broker]\nurl = "mqtt://h"\nclient_id = \n')
    assert message.startswith(f"{tmp_path / 'tagwatch.toml'}: TOML syntax error")
    assert "line 3" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such configuration file"):
        load_config(tmp_path / "nope.toml", {})


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"folder\.toml: cannot read"):
        load_config(folder, {})
    path = tmp_path / "tagwatch.toml"
    path.write_bytes(b"\xff\xfe[broker]\n")
    with pytest.raises(ConfigError, match=r"tagwatch\.toml: not UTF-8"):
        load_config(path, {})


# --------------------------------------------------------------------------- broker details


def test_embedded_broker_and_tls(tmp_path: Path) -> None:
    assert load_config(None, {"TAGWATCH_BROKER_URL": "embedded"}).broker.embedded
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "c.pem", "c.key"))
    for file in (ca, cert, key):
        file.write_text("x", encoding="utf-8")
    path = write(
        tmp_path,
        f'[broker]\nurl = "mqtts://h:9883"\nca_file = "{ca}"\ncert_file = "{cert}"\n'
        f'key_file = "{key}"\n',
    )
    broker = load_config(path, {}).broker
    assert (broker.tls, broker.port, broker.ca_file, broker.key_file) == (True, 9883, ca, key)
    assert not broker.embedded
    only_cert = write(tmp_path, f'[broker]\nurl = "mqtts://h"\ncert_file = "{cert}"\n', "b.toml")
    with pytest.raises(ConfigError, match=r"b\.toml: \[broker\] cert_file: .*key_file is missing"):
        load_config(only_cert, {})


def test_broker_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BrokerConfig().port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- rules_with


def test_rules_with_applies_overrides() -> None:
    base = Rules()
    rules = rules_with(base, {"warn_m": 400, "repeat_count": 5.0, "eta_max_s": 900.5}, "case C-1")
    assert (rules.warn_m, rules.repeat_count, rules.eta_max_s) == (400.0, 5, 900.5)
    assert type(rules.warn_m) is float and type(rules.repeat_count) is int
    assert rules.no_comms_s == base.no_comms_s
    assert base.warn_m == 250.0  # the base is untouched
    assert rules_with(base, {}, "case C-1") == base


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"warn": 1}, "c.json: case.rules: warn: unknown rule (did you mean 'warn_m'?)"),
        ({"warn_m": True}, "c.json: case.rules: warn_m: expected a number, got a boolean"),
        ({"warn_m": "250"}, "c.json: case.rules: warn_m: expected a number, got a string"),
        ({"warn_m": None}, "c.json: case.rules: warn_m: expected a number"),
        ({"repeat_count": 2.5}, "c.json: case.rules: repeat_count: expected an integer"),
        ({"repeat_count": False}, "c.json: case.rules: repeat_count: expected an integer"),
        ({"repeat_count": 0}, "c.json: case.rules: repeat_count: must be at least 1"),
        ({"near_m": -0.5}, "c.json: case.rules: near_m: must not be negative"),
        ({"loiter_s": float("inf")}, "c.json: case.rules: loiter_s: inf is not a finite number"),
        ({"battery_low_pct": 101}, "c.json: case.rules: battery_low_pct: must be at most 100"),
        ({"eta_critical_s": 601}, "c.json: case.rules: eta_critical_s: 601.0 is greater than"),
        ({"eta_max_s": 100}, "c.json: case.rules: eta_max_s: 100.0 is less than eta_critical_s"),
    ],
)
def test_rules_with_refuses_bad_overrides(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        rules_with(Rules(), overrides, "c.json: case.rules")
    assert str(info.value).startswith(expected)
