"""Shared by every test directory. Kept generic on purpose: nothing here may need Kafka or Redis,
so `pytest tests/unit` runs on a machine without the stack (integration fixtures live in
tests/integration/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root directory (where pyproject.toml is)."""
    return REPO_ROOT
