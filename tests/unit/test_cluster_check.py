"""On a Redis Cluster a flow with guardrails, or OBSERVER_ACTIONS=hold, is refused before it runs
(held actions and incidents change keys across shards atomically); other flows run, and on a
single Redis all do."""

from __future__ import annotations

from pathlib import Path

import pytest

from observer.cli.wiring import _cluster_check
from observer.errors import ConfigError
from observer.flows.compiler import load_registry
from observer.redis_settings import parse_redis_url

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
GUARDED = GOLDEN / "payment-outage-opens-an-incident" / "flow.yaml"


def test_a_flow_with_guardrails_is_refused_on_a_cluster_only() -> None:
    guarded = load_registry([GUARDED])
    assert any(f.guardrails.active for f in guarded)
    cluster = parse_redis_url("redis+cluster://127.0.0.1:7000")
    with pytest.raises(ConfigError, match="guardrails need a single Redis"):
        _cluster_check(cluster, "publish")(guarded)
    _cluster_check(parse_redis_url("redis://127.0.0.1:6379/0"), "publish")(
        guarded
    )  # single Redis: runs
    plain = load_registry([Path(__file__).resolve().parents[2] / "flows" / "checkout.yaml"])
    assert not any(f.guardrails.active for f in plain)
    _cluster_check(cluster, "publish")(plain)


def test_holding_actions_is_refused_on_a_cluster_only() -> None:
    plain = load_registry([Path(__file__).resolve().parents[2] / "flows" / "checkout.yaml"])
    with pytest.raises(ConfigError, match="OBSERVER_ACTIONS=hold need a single Redis"):
        _cluster_check(parse_redis_url("redis+cluster://127.0.0.1:7000"), "hold")(plain)
    _cluster_check(parse_redis_url("redis://127.0.0.1:6379/0"), "hold")(plain)
