"""The command line never reports a false success and never answers bad input with a
traceback (DESIGN 3.5): --version, `config check`, sub-commands' own help, mistyped
flags named by their sub-command, exit status 0 done, 1 runtime failure, 2 bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tagwatch.record import Batch, Entry, Record

from .conftest import ROOT

EXAMPLE = ROOT / "config" / "tagwatch.example.toml"


def tagwatch(*args: str, cwd: Path | None = None, env: dict | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("TAGWATCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "tagwatch.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=base | (env or {}),
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def config_file(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "rec").mkdir(exist_ok=True)
    path = tmp_path / "tagwatch.toml"
    path.write_text(
        f'[cases]\npath = "{ROOT / "config" / "cases"}"\n'
        f'[record]\nurl = "sqlite://{tmp_path / "rec" / "record.db"}"\n' + extra
    )
    return path


def test_version() -> None:
    from importlib.metadata import version

    done = tagwatch("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"tagwatch {version('tagwatch')}"


def test_help_documents_the_exit_statuses() -> None:
    done = tagwatch("--help")
    assert done.returncode == 0
    assert "0 done, 1 runtime failure, 2 bad usage or bad input" in " ".join(done.stdout.split())


@pytest.mark.parametrize("group, action", [
    ("record", "verify"), ("bench", "core"), ("cases", "check"), ("alerts", "ack"),
    ("config", "check"),
])
def test_a_command_without_its_action_prints_its_own_help(group: str, action: str) -> None:
    done = tagwatch(group)
    assert done.returncode == 2
    assert done.stderr.startswith(f"usage: tagwatch {group} "), done.stderr
    assert action in done.stderr


@pytest.mark.parametrize("args, command, flag", [
    (["record", "verify", "--confg", "x.toml"], "tagwatch record verify", "--confg x.toml"),
    (["replay", "a", "b", "--strict"], "tagwatch replay", "--strict"),
    (["demo", "--sped", "3"], "tagwatch demo", "--sped 3"),
])
def test_a_mistyped_flag_is_named_by_its_sub_command(args: list[str], command, flag) -> None:
    done = tagwatch(*args)
    assert done.returncode == 2
    assert f"{command}: error: unrecognized arguments: {flag}" in done.stderr, done.stderr


def test_config_check_prints_the_effective_config_redacted(tmp_path: Path) -> None:
    config = config_file(tmp_path, '[broker]\nusername = "tagwatch"\n'
                         '[[feed.users]]\nname = "op"\nrole = "operator"\n'
                         f'token_sha256 = "{"ab" * 32}"\n')
    done = tagwatch("config", "check", "--config", str(config),
                    env={"TAGWATCH_BROKER_PASSWORD": "s3cret-pw", "TAGWATCH_RULES_WARN_M": "300"})
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["rules"]["warn_m"] == 300  # the environment applied: the effective config
    assert shown["broker"]["password"] == "***"
    assert shown["feed"]["users"][0]["token_sha256"] == "***"
    assert "s3cret-pw" not in done.stdout + done.stderr and "abab" not in done.stdout
    assert "configuration valid" in done.stderr


def test_config_check_names_a_bad_key_and_exits_2(tmp_path: Path) -> None:
    config = config_file(tmp_path, "[rules]\nwarn_mm = 3\n")
    done = tagwatch("config", "check", "--config", str(config))
    assert done.returncode == 2
    assert "warn_mm" in done.stderr


def test_config_check_and_run_say_which_folder_to_create(tmp_path: Path) -> None:
    # The example configuration from a folder without config/cases, as a new user runs it.
    done = tagwatch("config", "check", "--config", str(EXAMPLE), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"[cases] path: config/cases (relative to {tmp_path})" in done.stderr
    assert "TAGWATCH_CASES_PATH" in done.stderr
    # run starts without its cases folder (not ready until a reload finds it), but not
    # without the folder of its SQLite record: it says which to create.
    done = tagwatch("run", "--config", str(EXAMPLE), cwd=tmp_path,
                    env={"TAGWATCH_RECORD_URL": f"sqlite://{tmp_path}/state/record.db"})
    assert done.returncode == 2, done.stderr
    assert f"the folder {tmp_path}/state of the SQLite record does not exist" in done.stderr
    assert "TAGWATCH_RECORD_URL" in done.stderr
    done = tagwatch("config", "check", "--config", str(EXAMPLE), cwd=ROOT,
                    env={"TAGWATCH_RECORD_URL": f"sqlite://{tmp_path}/missing/record.db"})
    assert done.returncode == 2
    assert f"folder {tmp_path}/missing of the SQLite record does not exist" in done.stderr
    # As shipped, from the checkout, with the record's folder made: only the example's
    # public dashboard token is refused, as tagwatch run refuses it.
    done = tagwatch("config", "check", "--config", str(EXAMPLE), cwd=ROOT,
                    env={"TAGWATCH_RECORD_URL": f"sqlite://{tmp_path}/record.db"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("tagwatch: ") == 1
    assert "[[feed.users]] 'duty-operator': token_sha256 is the example's" in done.stderr


@pytest.mark.parametrize("content, said", [
    ("x = [", "not valid TOML"),
    ('[scenario]\nname = "x"\n', "scenario.cases: is required"),
])
def test_demo_with_a_bad_scenario_file_exits_2_naming_it(tmp_path: Path, content, said) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(content)
    done = tagwatch("demo", "--scenario", str(scenario))
    assert done.returncode == 2
    assert str(scenario) in done.stderr and said in done.stderr


@pytest.mark.parametrize("args, said", [
    (["demo", "--port", "99999999"], "--port 99999999: must be 1..65535"),
    (["demo", "--broker", "foo://x"], '--broker foo://x: scheme "foo" is not supported'),
    (["demo", "--broker", "mqtt://"], "--broker mqtt://: no host in the url"),
    (["bench", "notify", "--breaches", "-1"], "argument --breaches: -1 is not in 1..10000"),
    (["bench", "e2e", "--fixes", "0"], "argument --fixes: 0 is not in"),
])
def test_bad_numbers_exit_2_naming_the_flag(args: list[str], said: str) -> None:
    done = tagwatch(*args)
    assert done.returncode == 2
    assert said in done.stderr


def test_record_export_to_a_bad_out_exits_2_naming_it(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    record = Record.open(f"sqlite://{tmp_path / 'rec' / 'record.db'}")
    body = {"tag": "T-1001", "ts": 1_764_324_930.0, "lat": 51.5, "lon": -0.12, "acc": 8.0}
    record.commit(Batch([Entry("case:C-0001", "fix", body, tag="T-1001",
                               event_ts=body["ts"])], [], {}), body["ts"] + 1)
    record.close()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = tagwatch("record", "export", "--config", str(config), "--case", "C-0001",
                    "--since", "2025-11-28T00:00:00Z", "--until", "2025-11-29T00:00:00Z",
                    "--out", str(blocker / "bundle"))
    assert done.returncode == 2, done.stderr
    assert f"--out {blocker / 'bundle'}" in done.stderr


def test_run_with_its_feed_port_taken_exits_1_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tagwatch("run", "--config", str(config_file(tmp_path)),
                        env={"TAGWATCH_BROKER_URL": "embedded",
                             "TAGWATCH_FEED_LISTEN": f"127.0.0.1:{port}"})
    assert done.returncode == 1  # uvicorn's own status 3 is not one of ours
    assert f"tagwatch: [feed] listen 127.0.0.1:{port}: cannot listen there" in done.stderr


def test_zones_names_a_fixes_file_that_is_not_utf8(tmp_path: Path) -> None:
    fixes = tmp_path / "fixes.csv"
    fixes.write_bytes(b"tag,ts,lat,lon\nT-1001,2026-11-02T10:00:00Z,51.5\xff,-0.12\n")
    done = tagwatch("zones", str(ROOT / "config" / "cases"), str(fixes))
    assert done.returncode == 2
    assert f"tagwatch: {fixes}: not UTF-8" in done.stderr
