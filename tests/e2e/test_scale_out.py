"""Several `observer run` processes in one group share the work (spec section 5): the source
topics are keyed by something else than the correlation key, so every instance's events are
spread over partitions read by different processes; the keyed topic brings them together.
A process joins and another leaves mid-stream (orderly rebalances): every deadline fires
exactly once across the group, and no step that came is reported missing."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from tests.e2e.conftest import ObserverProcess, ObserverProcesses, observer_env
from tests.integration.kafka_helpers import Record, consume_all

pytestmark = pytest.mark.timeout(300)

FLOW = """
flow: scale
version: 1
sources:
  orders: {{topic: {p}-orders, type: value.type, key: value.id}}
  pay: {{topic: {p}-pay, type: value.type, key: value.id}}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 2s
retain: 1s
expire: 1m
"""
ORDERS = 600
UNPAID_EVERY = 7  # every 7th order never pays: its `paid` deadline fires


def metric(p: ObserverProcess, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{p.port}/metrics", timeout=5).text
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
        total += float(m.group(1))
    return total


def produce_orders(bootstrap: str, prefix: str, first: int, last: int) -> None:
    """Placed now, Paid 300 ms of event time later; record keys are random, not the order id."""
    prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(first, last):
        t = int(time.time() * 1000)
        oid = f"o-{i}"
        prod.produce(
            f"{prefix}-orders",
            orjson.dumps({"type": "Placed", "id": oid}),
            uuid.uuid4().hex.encode(),
            timestamp=t,
        )
        if i % UNPAID_EVERY:
            prod.produce(
                f"{prefix}-pay",
                orjson.dumps({"type": "Paid", "id": oid}),
                uuid.uuid4().hex.encode(),
                timestamp=t + 300,
            )
        if i % 50 == 0:
            prod.poll(0)
            time.sleep(0.05)
    assert prod.flush(30) == 0


def missing_keys(records: list[Record]) -> set[str]:
    return {
        orjson.loads(r.value or b"{}")["key"]
        for r in records
        if orjson.loads(r.value or b"{}")["kind"] == "missing"
    }


def test_two_processes_share_the_work_and_each_deadline_fires_once(
    stack: Any,
    unique: str,
    create_topics: Any,
    observer_procs: ObserverProcesses,
    tmp_path: Path,
    figures: list[str],
) -> None:
    create_topics([f"{unique}-orders", f"{unique}-pay"], partitions=4)
    create_topics([f"{unique}-alerts", f"{unique}-outcomes", f"{unique}-dlq"], partitions=1)
    flow = tmp_path / "scale.yaml"
    flow.write_text(FLOW.format(p=unique))
    env = observer_env(
        stack,
        unique,
        OBSERVER_SHARDS="8",
        OBSERVER_IDLE_GRACE_MS="300",
        OBSERVER_TICK_INTERVAL_MS="20",
        OBSERVER_COMMIT_INTERVAL_MS="50",
        OBSERVER_KAFKA_SESSION_TIMEOUT_MS="6000",
    )
    a = observer_procs.start("a", flow, env)
    produce_orders(stack.bootstrap_servers, unique, 0, ORDERS // 3)
    b = observer_procs.start("b", flow, env)
    produce_orders(stack.bootstrap_servers, unique, ORDERS // 3, 2 * ORDERS // 3)
    deadline = time.monotonic() + 60
    while (
        metric(a, "observer_owned_shards") + metric(b, "observer_owned_shards") != 8
        or min(metric(a, "observer_owned_shards"), metric(b, "observer_owned_shards")) == 0
    ):
        assert time.monotonic() < deadline, "the shards were never split between a and b"
        time.sleep(0.2)
    shared = (metric(a, "observer_owned_shards"), metric(b, "observer_owned_shards"))
    assert b.stop() == 0, b.tail()  # b leaves in an orderly way; a takes every shard back
    produce_orders(stack.bootstrap_servers, unique, 2 * ORDERS // 3, ORDERS)
    unpaid = {f"o-{i}" for i in range(ORDERS) if i % UNPAID_EVERY == 0}

    alerts_topic, outcomes_topic = f"{unique}-alerts", f"{unique}-outcomes"
    alerts = consume_all(
        stack.bootstrap_servers,
        alerts_topic,
        timeout=90,
        until=lambda rs: missing_keys(rs) >= unpaid,
    )
    assert missing_keys(alerts) >= unpaid, (
        f"{len(missing_keys(alerts))} orders with a missing alert, {len(unpaid)} expected; "
        f"a: {a.tail(10)}"
    )
    # A deadline fired twice would be published by the time a later one is: one more unpaid
    # order, after all the others, then every alert up to its.
    produce_orders(
        stack.bootstrap_servers, unique, ORDERS * UNPAID_EVERY, ORDERS * UNPAID_EVERY + 1
    )
    last = f"o-{ORDERS * UNPAID_EVERY}"
    alerts = consume_all(
        stack.bootstrap_servers, alerts_topic, timeout=60, until=lambda rs: last in missing_keys(rs)
    )
    assert last in missing_keys(alerts), f"no missing alert for {last}; a: {a.tail(10)}"
    alerts = [
        r
        for r in consume_all(stack.bootstrap_servers, alerts_topic)
        if missing_keys([r]) and missing_keys([r]) != {last}
    ]
    ids = Counter(r.header("observer-id") for r in alerts)
    keys = Counter(orjson.loads(r.value or b"{}")["key"] for r in alerts)
    paid = {f"o-{i}" for i in range(ORDERS)} - unpaid

    def completed(records: list[Record]) -> set[str]:
        return {
            orjson.loads(r.value or b"{}")["key"]
            for r in records
            if orjson.loads(r.value or b"{}")["outcome"] == "completed"
        }

    outcomes = consume_all(
        stack.bootstrap_servers, outcomes_topic, timeout=60, until=lambda rs: completed(rs) >= paid
    )
    figures.append(
        f"orders {ORDERS}, unpaid {len(unpaid)}, shards split {shared[0]:.0f}/{shared[1]:.0f}, "
        f"missing alerts {len(alerts)} ({len(ids)} distinct ids), outcomes {len(outcomes)}"
    )
    assert set(keys) == unpaid and max(keys.values()) == 1, keys.most_common(3)
    assert max(ids.values()) == 1, ids.most_common(3)
    assert completed(outcomes) == paid
    assert "Traceback" not in a.log + b.log
