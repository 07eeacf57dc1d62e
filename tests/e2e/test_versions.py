"""`observer deploy` to a running group of two `observer run` processes (contract §8): v2 is
deployed while v1 instances are open; within 10 s both processes run it (new instances take v2,
including its step on a topic v1 does not read: the routers subscribe to it without a restart),
and the v1 instances finish on v1's window and action with `version: 1`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from observer.timefmt import format_time
from tests.e2e.conftest import OBSERVER, ObserverProcess, ObserverProcesses, observer_env
from tests.e2e.test_scale_out import metric
from tests.integration.kafka_helpers import Record, consume_all

pytestmark = pytest.mark.timeout(240)

V1 = """
flow: vers
version: 1
sources:
  orders: {{topic: {p}-orders, type: value.type, key: value.id}}
  pay: {{topic: {p}-pay, type: value.type, key: value.id}}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 12s
    if_missing: [cancel]
actions:
  cancel:
    publish: {{topic: {p}-cmds, key: "{{{{ key }}}}", value: {{type: CancelV1, id: "{{{{ key }}}}"}}}}
"""
V2 = """
flow: vers
version: 2
sources:
  orders: {{topic: {p}-orders, type: value.type, key: value.id}}
  pay: {{topic: {p}-pay, type: value.type, key: value.id}}
  ship: {{topic: {p}-ship, type: value.type, key: value.id}}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 4s
    if_missing: [cancel]
  - step: shipped
    on: ship.Shipped
    within: 4s
actions:
  cancel:
    publish: {{topic: {p}-cmds, key: "{{{{ key }}}}", value: {{type: CancelV2, id: "{{{{ key }}}}"}}}}
"""
N = 10  # orders per version; the first half is paid (and shipped), the rest is not


def send(producer: Producer, topic: str, etype: str, key: str, at: int) -> None:
    producer.produce(topic, orjson.dumps({"type": etype, "id": key}), key.encode(), timestamp=at)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def by_key(records: list[Record], field: str) -> dict[str, tuple[Any, ...]]:
    out = {}
    for r in records:
        v = orjson.loads(r.value or b"{}")
        out[v.get("key") or v.get("id")] = (v.get(field), v.get("version"))
    return out


def version_of(p: ObserverProcess, key: str) -> int | None:
    r = httpx.get(f"http://127.0.0.1:{p.port}/instances/vers/{key}", timeout=5)
    return r.json()["version"] if r.status_code == 200 else None


def test_a_version_deployed_to_a_running_group_reaches_every_process_and_spares_open_ones(
    stack: Any,
    unique: str,
    create_topics: Any,
    observer_procs: ObserverProcesses,
    tmp_path: Path,
    figures: list[str],
) -> None:
    p = unique
    create_topics([f"{p}-orders", f"{p}-pay", f"{p}-ship"], partitions=2)
    create_topics([f"{p}-alerts", f"{p}-outcomes", f"{p}-dlq", f"{p}-cmds"], partitions=1)
    v1, v2 = tmp_path / "vers-v1.yaml", tmp_path / "vers-v2.yaml"
    v1.write_text(V1.format(p=p))
    v2.write_text(V2.format(p=p))
    env = observer_env(
        stack,
        unique,
        OBSERVER_SHARDS="8",
        OBSERVER_IDLE_GRACE_MS="300",
        OBSERVER_KAFKA_SESSION_TIMEOUT_MS="6000",
    )
    a, b = observer_procs.start_all(["a", "b"], v1, env)
    deadline = time.monotonic() + 60
    while min(metric(a, "observer_owned_shards"), metric(b, "observer_owned_shards")) == 0:
        assert time.monotonic() < deadline, "the shards were never split between a and b"
        time.sleep(0.2)

    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 5})
    t_old = now_ms()
    for i in range(N):
        send(producer, f"{p}-orders", "Placed", f"o-{i}", t_old)
    assert producer.flush(10) == 0
    deadline = time.monotonic() + 30
    while any(version_of(a, f"o-{i}") != 1 for i in range(N)):
        assert time.monotonic() < deadline, "the v1 instances did not open"
        time.sleep(0.1)

    started = time.monotonic()
    done = subprocess.run(
        [OBSERVER, "deploy", str(v2), "--wait", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "deployed vers v2" in done.stderr and "live on 2 processes" in done.stderr
    figures.append(f"observer deploy --wait: live on both processes after {took:.1f}s")

    t_new = now_ms()
    for i in range(N):
        send(producer, f"{p}-orders", "Placed", f"n-{i}", t_new)
    assert producer.flush(10) == 0
    for i in range(N // 2):
        send(producer, f"{p}-pay", "Paid", f"o-{i}", t_new + 100)
        send(producer, f"{p}-pay", "Paid", f"n-{i}", t_new + 100)
        send(producer, f"{p}-ship", "Shipped", f"n-{i}", t_new + 200)
    assert producer.flush(10) == 0

    unpaid = {f"o-{i}" for i in range(N // 2, N)} | {f"n-{i}" for i in range(N // 2, N)}
    alerts = consume_all(
        stack.bootstrap_servers,
        f"{p}-alerts",
        timeout=60,
        until=lambda rs: set(by_key(rs, "kind")) >= unpaid,
    )
    assert by_key(alerts, "kind") == {
        **{f"o-{i}": ("missing", 1) for i in range(N // 2, N)},
        **{f"n-{i}": ("missing", 2) for i in range(N // 2, N)},
    }
    # each on its own version's window: v1's 12 s, v2's 4 s
    deadlines = {k: d for k, (d, _v) in by_key(alerts, "deadline").items()}
    assert {deadlines[f"o-{i}"] for i in range(N // 2, N)} == {format_time(t_old + 12_000)}
    assert {deadlines[f"n-{i}"] for i in range(N // 2, N)} == {format_time(t_new + 4_000)}
    commands = consume_all(stack.bootstrap_servers, f"{p}-cmds", timeout=30, min_count=N)
    assert {k: t for k, (t, _v) in by_key(commands, "type").items()} == {
        **{f"o-{i}": "CancelV1" for i in range(N // 2, N)},
        **{f"n-{i}": "CancelV2" for i in range(N // 2, N)},
    }
    completed = {f"o-{i}" for i in range(N // 2)} | {f"n-{i}" for i in range(N // 2)}
    outcomes = consume_all(
        stack.bootstrap_servers,
        f"{p}-outcomes",
        timeout=60,
        until=lambda rs: set(by_key(rs, "outcome")) >= completed,
    )
    assert by_key(outcomes, "outcome") == {
        **{f"o-{i}": ("completed", 1) for i in range(N // 2)},
        **{f"n-{i}": ("completed", 2) for i in range(N // 2)},
    }
    for proc in (a, b):
        assert "deployment 2: running vers v1, vers v2 (new: vers v2" in proc.log, proc.tail()
        assert "Traceback" not in proc.log
