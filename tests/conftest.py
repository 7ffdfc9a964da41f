"""Shared test configuration."""

from pathlib import Path

import pytest

pytest_plugins = ["tests.brokers"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def example_cases() -> Path:
    return ROOT / "config" / "cases"
