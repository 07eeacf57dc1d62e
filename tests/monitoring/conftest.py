"""Fixtures for the tests of ops/monitoring/: Debian's promtool, Prometheus and Alertmanager.

- `promtool` (session): the promtool binary, installed with `ops/monitoring/run install` (apt-get,
  once per machine) when missing.
- `run_promtool(*args)`: runs it, returns the completed process (never raises on exit status).

Every test collected under tests/monitoring/ gets the `monitoring` marker; test_live.py also
needs the stack (`integration`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MONITORING = REPO / "ops" / "monitoring"
RUN = MONITORING / "run"

RunPromtool = Callable[..., subprocess.CompletedProcess[str]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not only this directory's.
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.monitoring)


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        done = subprocess.run(
            [str(RUN), "install"], capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode != 0:
            pytest.fail(f"ops/monitoring/run install failed:\n{done.stdout}{done.stderr}")
        found = shutil.which("promtool")
    assert found is not None, "ops/monitoring/run install left no promtool on PATH"
    return found


@pytest.fixture(scope="session")
def run_promtool(promtool: str) -> RunPromtool:
    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
        )

    return run
