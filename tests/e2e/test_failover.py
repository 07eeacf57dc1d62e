"""Failover (issue 13) with real `observer run` processes on the observer's default settings:

- a process killed with SIGKILL and started again at once with its OBSERVER_INSTANCE_ID gets
  its partitions back without waiting for the broker to drop the dead member, so a `missing`
  alert due within the window comes out (once, nothing lost, no false alert);
- two processes started with the same OBSERVER_INSTANCE_ID never both process the shards:
  Kafka fences the older one, which stops with exit 1 and says why; the newer one goes on.

Recovery times are printed in the terminal summary, not asserted (waits are bounded by
generous limits: a process must recover at all).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from tests.e2e.conftest import ObserverProcess, ObserverProcesses, coverage_restored, observer_env
from tests.integration.kafka_helpers import Record, consume_all
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

SHARDS = 8
PARTITIONS = 2
FLOW = """
flow: failover
version: 1
key: order_id
sources:
  orders: {{topic: {p}.orders, type: value.type, key: value.id}}
  pay: {{topic: {p}.pay, type: value.type, key: value.id}}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 6s
retain: 1h
expire: 10m
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Setup:
    """Topics, flow file and environment of one test."""

    def __init__(self, stack: Any, unique: str, create_topics: Any, tmp: Path) -> None:
        self.prefix = unique
        self.bootstrap = stack.bootstrap_servers
        create_topics([f"{unique}.orders", f"{unique}.pay"], PARTITIONS)
        create_topics([f"{unique}.{t}" for t in ("alerts", "outcomes", "dlq")], 1)
        self.flow = tmp / "failover.yaml"
        self.flow.write_text(FLOW.format(p=unique))
        self.env = observer_env(
            stack,
            unique,
            OBSERVER_ALERTS_TOPIC=f"{unique}.alerts",
            OBSERVER_OUTCOMES_TOPIC=f"{unique}.outcomes",
            OBSERVER_DLQ_TOPIC=f"{unique}.dlq",
            OBSERVER_SHARDS=str(SHARDS),
            OBSERVER_INSTANCE_ID="obs-0",
        )
        self.producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0})

    def send(self, etype: str, key: str, at: int) -> None:
        topic = "orders" if etype == "Placed" else "pay"
        value = orjson.dumps({"type": etype, "id": key})
        self.producer.produce(f"{self.prefix}.{topic}", value, key.encode(), timestamp=at)
        assert self.producer.flush(10) == 0

    def out(self, name: str) -> list[Record]:
        return consume_all(self.bootstrap, f"{self.prefix}.{name}", timeout=10)

    def start(self, procs: ObserverProcesses, name: str, ready: bool = True) -> ObserverProcess:
        return procs.start(name, self.flow, self.env, ready=ready)


def wait_for(what: Any, timeout: float, message: str) -> Any:
    return wait_until(what, timeout, message)


def missing_alerts(s: Setup) -> list[Record]:
    return [r for r in s.out("alerts") if orjson.loads(r.value or b"{}")["kind"] == "missing"]


def outcomes(s: Setup) -> dict[str, str]:
    return {
        str(v["key"]): v["outcome"]
        for r in s.out("outcomes")
        if (v := orjson.loads(r.value or b"{}"))
    }


def first_line(p: ObserverProcess, text: str) -> float | None:
    """When the first log line containing `text` was read (time.monotonic())."""
    return next((t for t, line in zip(p.read_at, p.lines, strict=False) if text in line), None)


def owns_everything(p: ObserverProcess) -> bool:
    shards, parts = p.owned(time.monotonic())
    return len(shards) == SHARDS and len(parts) == 2 * PARTITIONS


def test_a_killed_process_restarted_with_its_instance_id_alerts_within_the_window(
    stack: Any,
    unique: str,
    create_topics: Any,
    observer_procs: ObserverProcesses,
    tmp_path: Path,
    figures: list[str],
) -> None:
    s = Setup(stack, unique, create_topics, tmp_path)
    first = s.start(observer_procs, "first")
    wait_for(lambda: owns_everything(first), 60, "the first process to own every shard")
    run = uuid.uuid4().hex[:6]
    unpaid, paid, paid_later = f"unpaid-{run}", f"paid-{run}", f"paid-later-{run}"
    t0 = now_ms()
    for key in (unpaid, paid, paid_later):
        s.send("Placed", key, t0)
    s.send("Paid", paid, t0 + 300)
    time.sleep(2.0)  # the scenario: the process dies 2 s into the 6 s window
    first.kill()
    killed = time.monotonic()
    again = s.start(observer_procs, "again", ready=False)  # at once, the same INSTANCE_ID
    s.send("Paid", paid_later, t0 + 1000)
    owned_after = coverage_restored([again], killed, SHARDS, 2 * PARTITIONS, timeout=60)
    assert owned_after is not None, (
        f"the restarted process never owned every shard:\n{again.tail()}"
    )
    alert = wait_for(lambda: missing_alerts(s), 60, "the missing alert")[0]
    alert_after = (alert.timestamp_ms - t0) / 1000
    wanted = {paid: "completed", paid_later: "completed"}
    wait_for(lambda: outcomes(s) == wanted, 60, "both paid orders completed")
    figures.append(
        f"SIGKILL 2 s into a 6 s window, restarted at once: shards owned again "
        f"{owned_after:.1f} s after the kill; the missing alert {alert_after:.1f} s after the "
        f"order (due at 6 s)"
    )
    assert orjson.loads(alert.value or b"{}")["key"] == unpaid
    # nothing false and nothing twice: one alert id, for the unpaid order only
    alerts = missing_alerts(s)
    assert {orjson.loads(a.value or b"{}")["key"] for a in alerts} == {unpaid}
    assert len({a.header("observer-id") for a in alerts}) == 1
    assert again.running(), again.tail()
    assert again.stop() == 0, again.tail()


def test_two_processes_with_one_instance_id_never_share_a_shard(
    stack: Any,
    unique: str,
    create_topics: Any,
    observer_procs: ObserverProcesses,
    tmp_path: Path,
    figures: list[str],
) -> None:
    s = Setup(stack, unique, create_topics, tmp_path)
    older = s.start(observer_procs, "older")
    wait_for(lambda: owns_everything(older), 60, "the older process to own every shard")
    newer = s.start(observer_procs, "newer", ready=False)  # a mistake: the same INSTANCE_ID
    started = time.monotonic()
    wait_for(lambda: not older.running(), 60, "the older process to stop")
    stopped_after = time.monotonic() - started
    assert older.proc.returncode == 1, older.tail()
    assert "OBSERVER_INSTANCE_ID" in older.log and "obs-0" in older.log, older.tail()
    assert "Traceback" not in older.log, older.tail()
    # the stage Kafka fenced first gave its partitions up as lost (nothing committed); the
    # other one's commits, if any, are refused by the broker once its member is taken over
    assert "(not committing)" in older.log, older.tail()
    newer.wait_ready()
    wait_for(lambda: owns_everything(newer), 60, "the newer process to own every shard")
    key = f"unpaid-{uuid.uuid4().hex[:6]}"
    s.send("Placed", key, now_ms())
    alerts = wait_for(lambda: missing_alerts(s), 60, "the missing alert")
    assert [orjson.loads(a.value or b"{}")["key"] for a in alerts] == [key]
    assert Counter(a.header("observer-id") for a in alerts).most_common(1)[0][1] == 1
    assigned = first_line(newer, "assigned")
    gave_up = first_line(older, "(not committing)")
    overlap = "?" if assigned is None or gave_up is None else f"{gave_up - assigned:.2f}"
    figures.append(
        f"the older process gave its partitions up {overlap} s after the newer one was "
        f"assigned them, and exited {stopped_after:.1f} s after the newer one started"
    )
    assert newer.running(), newer.tail()
    assert newer.stop() == 0, newer.tail()
