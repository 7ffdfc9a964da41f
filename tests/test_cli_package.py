"""`pip install .` gives a working package: the files the commands need are in the wheel.

The full check (install the wheel in a fresh venv outside the checkout, run
`tagwatch demo` and `tagwatch run` from another folder) is .ci/installed_check.py,
a step of .ci/run; these tests are its fast part.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tagwatch import demo
from tagwatch.feed import app
from tagwatch.shipped import example, static

from .conftest import ROOT

NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
              ".hypothesis", "test-artifacts")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_wheel_ships_the_page_the_scenarios_the_cases_and_the_example_config(tmp_path) -> None:
    # From a clean copy: setuptools would take stale files from the checkout's build/.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("tagwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    static = ROOT / "tagwatch" / "feed" / "static"
    wanted = {f"tagwatch/feed/static/{p.relative_to(static).as_posix()}"
              for p in static.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    for folder in ("scenarios", "cases"):
        files = (ROOT / "config" / folder).iterdir()
        wanted |= {f"tagwatch/examples/{folder}/{p.name}" for p in files}
    wanted |= {"tagwatch/examples/tagwatch.example.toml", "tagwatch/feed/static/index.html",
               "tagwatch/examples/scenarios/day_in_the_life.toml"}
    assert wanted - names == set()


def test_every_python_package_of_the_tree_is_listed_in_pyproject() -> None:
    listed = set(PYPROJECT["packages"])
    found = set()
    for top in ("tagwatch", "zones", "simulators"):
        for init in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in init.parts:
                found.add(".".join(init.parent.relative_to(ROOT).parts))
    assert found - listed == set(), "add these to [tool.setuptools] packages"


def test_package_data_is_found_through_importlib_resources_not_the_source_tree() -> None:
    assert PYPROJECT["package-dir"]["tagwatch.examples"] == "config"
    assert (example("cases") / "C-0001.geojson").is_file()
    assert example("scenarios", "day_in_the_life.toml").is_file()
    assert example("tagwatch.example.toml").is_file()
    assert (static() / "index.html").is_file()
    # The demo and the dashboard take their files from there, not from paths of their own.
    assert example("scenarios", "day_in_the_life.toml") == demo.SCENARIO
    assert static() == app.STATIC


def test_the_docker_image_copies_every_folder_the_package_is_built_from() -> None:
    copied = {line.split()[1] for line in (ROOT / "deploy/Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")}
    sources = {name.split(".")[0] for name in PYPROJECT["packages"]}
    sources |= set(PYPROJECT["package-dir"].values())
    assert sources - copied == set()


def test_ci_runs_the_installed_package_check() -> None:
    steps = (ROOT / ".ci" / "run").read_text()
    assert ".ci/installed_check.py" in steps
    assert Path(ROOT / ".ci" / "installed_check.py").is_file()


def systemd_steps() -> list[str]:
    text = (ROOT / "deploy" / "README.md").read_text()
    section = text.split("## Install with systemd", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ")]


def test_the_systemd_steps_set_the_cases_path_to_a_folder_they_make(tmp_path) -> None:
    from tagwatch.config import load_config

    steps = systemd_steps()
    (edit,) = [s for s in steps if s.startswith("sed -i") and "/etc/tagwatch/tagwatch.toml" in s]
    pattern, replacement = re.fullmatch(r"sed -i 's\|(.+)\|(.+)\|' \S+", edit).groups()
    text = (ROOT / "config" / "tagwatch.example.toml").read_text()
    edited, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, "the sed line must match the example's [cases] path"
    config = tmp_path / "tagwatch.toml"
    config.write_text(edited)
    path = load_config(config, {}).cases.path
    assert path.is_absolute()
    assert any(s.startswith("install -d") and str(path) in s.split("#")[0] for s in steps)


def test_the_units_documentation_is_a_file_the_steps_install() -> None:
    unit = (ROOT / "deploy" / "tagwatch.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("Documentation=")]
    steps = [s.split("#")[0].split() for s in systemd_steps()]
    for uri in line.removeprefix("Documentation=").split():
        assert uri.startswith("file://"), uri
        target = uri.removeprefix("file://")
        installs = [s for s in steps if s[:1] == ["install"] and s[-1] == target]
        assert installs, f"no step installs {target}"
        assert (ROOT / "deploy" / installs[0][-2]).is_file()  # the steps run in deploy/


def test_the_test_command_uses_a_reachable_local_postgresql_unless_told_otherwise() -> None:
    from tests.record_db import postgres_url

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = server.getsockname()
        assert postgres_url({}, address) == f"postgresql://postgres@127.0.0.1:{address[1]}/test"
        assert postgres_url({"TAGWATCH_TEST_POSTGRES": ""}, address) == ""  # set empty: off
        named = "postgresql://u@db.example:5433/t"
        assert postgres_url({"TAGWATCH_TEST_POSTGRES": named}, address) == named
    assert postgres_url({}, address) == ""  # nothing answers: SQLite only, with a skip message


# -- the README: the front door, its commands real, its test command CI's ---------------

README = (ROOT / "README.md").read_text()


def test_the_readme_is_the_front_door_and_the_benchmark_history_is_kept_in_docs() -> None:
    for heading in ("Quick start", "Commands", "Configuration", "Contracts in brief",
                    "Figures", "Record", "Dashboard", "Alert quality", "Hardening and limits",
                    "Deploy", "Tests"):
        assert f"\n## {heading}\n" in README, heading
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", README)
              if re.search(r"[a-f]", w) and re.search(r"[0-9]", w)]
    assert hashes == [], "commit hashes belong in docs/BENCHMARKS.md"
    assert "not kept" not in README
    history = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    for kept in ("Tried in the same session and not kept", "8dad427", "a74a829",
                 "Accuracy (`python -m tests.accuracy_report`)"):
        assert kept in history
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (ROOT / link).exists(), link


def test_ci_runs_the_readme_test_command() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", quick_start, re.DOTALL)
    install, test = block.strip().splitlines()
    assert "pip install" in install and install.endswith("tagwatch demo")
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()
    tests_section = README.split("\n## Tests\n", 1)[1]
    assert f"```sh\n{test}\n```" in tests_section


def test_every_command_the_readme_names_exists(capsys) -> None:
    from tagwatch.cli import main

    named = set()
    for text in re.findall(r"`(tagwatch [^`]*)`", README):
        words = []
        for word in text.split()[1:3]:
            if not re.fullmatch(r"[a-z][a-z0-9]*", word):
                break
            words.append(word)
        named.add(tuple(words))
    assert {("run",), ("config", "check"), ("bench", "core"), ("replay",)} <= named
    for words in sorted(named):
        with pytest.raises(SystemExit) as done:
            main([*words, "--help"])
        assert done.value.code == 0, words
    capsys.readouterr()
