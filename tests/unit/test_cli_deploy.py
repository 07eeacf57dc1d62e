"""`observer deploy` from outside, the refusals that need no Redis: an invalid flow, a webhook
whose secret is not set here (unless `--no-secret-check`), a refused destination (always)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from observer.adapters.redis.flows import RedisFlowStore
from observer.cli import main
from observer.errors import StoreError
from tests.unit.replay_harness import BASE_FLOW

HOOK = """
  page:
    webhook: {url: "URL", sign: {secret: "${HOOK_KEY}"}}
"""


@dataclass
class Done:
    returncode: int
    stderr: str


@pytest.fixture(autouse=True)
def no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deploy that got as far as Redis fails at once with "observer deploy:"."""

    def unreachable(*args: object) -> RedisFlowStore:
        raise StoreError("no Redis in unit tests")

    monkeypatch.setattr(RedisFlowStore, "for_prefix", unreachable)


def deploy(*args: str, env: dict[str, str | None] | None = None) -> Done:
    """In-process: a subprocess per call costs seconds."""
    result = CliRunner().invoke(main, ["deploy", *args], env={"HOOK_KEY": None, **(env or {})})
    return Done(result.exit_code, result.stderr)


def flow_with_hook(tmp: Path, url: str) -> str:
    text = BASE_FLOW.replace("if_missing: [cancel]", "if_missing: [cancel, page]") + HOOK.replace(
        "URL", url
    )
    (tmp / "flow.yaml").write_text(text)
    return str(tmp / "flow.yaml")


def test_an_invalid_flow_is_not_deployed(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BASE_FLOW.replace("within: 10s", "within: soon"))
    done = deploy(str(tmp_path / "bad.yaml"))
    assert done.returncode == 2 and "bad.yaml:" in done.stderr and "soon" in done.stderr


def test_a_webhook_secret_not_set_here_is_refused_unless_told_it_lives_elsewhere(
    tmp_path: Path,
) -> None:
    flow = flow_with_hook(tmp_path, "https://hooks.example.com/x")
    refused = deploy(flow)
    assert refused.returncode == 2 and "HOOK_KEY is not set" in refused.stderr
    passed = deploy(flow, "--no-secret-check")
    assert passed.returncode == 2 and passed.stderr.startswith("observer deploy:")
    assert deploy(flow, env={"HOOK_KEY": "k"}).stderr.startswith("observer deploy:")


def test_a_refused_destination_is_refused_whatever_the_secrets(tmp_path: Path) -> None:
    flow = flow_with_hook(tmp_path, "http://169.254.169.254/latest")
    done = deploy(flow, "--no-secret-check")
    assert done.returncode == 2 and "link-local" in done.stderr
