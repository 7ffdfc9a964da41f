"""Shared test configuration."""

from pathlib import Path

import pytest

pytest_plugins = ["tests.brokers"]

ROOT = Path(__file__).resolve().parent.parent

# The suite runs on WORKERS processes (pytest-xdist), each test file whole on one of them
# (a file's tests share module fixtures and were written to run in order).
WORKERS = 2  # the developers' machines and CI's have 2 cores
DIST = "loadfile"


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """`pytest` means `pytest -n WORKERS --dist DIST`, unless the command line says
    otherwise: `-n N` (`-n 0`: one process), `--dist`, `-p no:xdist` or `--pdb`. Set here,
    not in pyproject's addopts: with the plugin off, an `-n` there is an unknown option.
    Runs before xdist's own hook of the same name, which turns this into workers."""
    opt = config.option
    if (not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput")
            or opt.usepdb):
        return
    if opt.numprocesses is None and opt.dist == "no" and not opt.tx:
        opt.numprocesses, opt.dist = WORKERS, DIST


@pytest.fixture
def example_cases() -> Path:
    return ROOT / "config" / "cases"
