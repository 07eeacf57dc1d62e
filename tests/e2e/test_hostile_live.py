"""Hostile data through a live `observer run`, judged by `observer replay` of the same records.

Generated orders (seeded, so every run sends the same) carry what breaks careless templates
and budgets: totals that are text, missing, beyond 64 bits or hundreds of kilobytes of text;
item lists that are numbers or absent; notes from empty to over a megabyte in total across a
record (over the 64 KiB budget of an event's captured values). The flow's handlers multiply,
measure and copy those values. The same records go once to `observer replay` and once to a
real `observer run` on the stack; the test then checks that the process never exited nor
logged a traceback, and that it published exactly what replay says it must -- every alert
(with its `action_errors`), every action record and every dead letter, by `observer-id` --
so nothing a producer writes stopped it or swallowed an alert. The figures (inputs tried,
crashes, records lost, the observer's largest RSS) are printed with the e2e figures.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from observer import jsonexact
from observer.replay import run_replay
from observer.topics import Topics
from tests.e2e.conftest import ObserverProcess
from tests.e2e.fuzz.harness import wait_for
from tests.integration.kafka_helpers import Record, consume_all

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ORDERS = 240
FLOW = """
flow: hostile
version: 1
sources:
  orders: {topic: SOURCE, type: value.type, key: value.id, id: header.eid, time: value.at}
steps:
  - step: placed
    on: orders.Placed
    capture: [value.total, value.items, value.note]
  - step: paid
    on: orders.Paid
    within: 2s
    if_missing: [explain, cancel, notify]
errors:
  - on: orders.Failed
    do: [cancel, refund]
actions:
  explain:
    alert: {summary: "order {{ key }}: {{ steps.placed.value.items | length }} items"}
  cancel:
    publish:
      topic: CMDS
      key: "{{ key }}"
      value: {type: Cancel, id: "{{ key }}", amount: "{{ steps.placed.value.total * 100 }}"}
  refund:
    publish: {topic: CMDS, key: "{{ key }}", value: {type: Refund, id: "{{ key }}"}}
  notify:
    publish:
      topic: CMDS
      key: "{{ key }}"
      value: {type: Notify, note: "{{ steps.placed.value.note }}"}
"""

_TOTALS: list[Callable[[random.Random], Any]] = [
    lambda r: r.randint(1, 10_000),
    lambda r: "lots",
    lambda r: 2**70 + r.randint(0, 9),  # beyond 64 bits: kept exact, never rounded
    lambda r: -(2**63) - 1,
    lambda r: 1.5e308,
    lambda r: "9" * r.choice([10, 100_000, 400_000]),  # text multiplied by 100
    lambda r: None,
]
_ITEMS: list[Callable[[random.Random], Any]] = [
    lambda r: [{"sku": f"s{i}"} for i in range(r.randint(0, 5))],
    lambda r: 7,
    lambda r: None,
    lambda r: [[[[[[[[[[[]]]]]]]]]]],
]
_NOTES: list[Callable[[random.Random], Any]] = [
    lambda r: "",
    lambda r: "é\u2028\x00" * r.randint(1, 2_000),
    lambda r: "n" * r.choice([30_000, 70_000, 300_000]),  # over the capture budget
]


def _orders(rng: random.Random, t0: int) -> list[tuple[dict[str, Any], str]]:
    """(value, event id) of each record, in the order produced (event time order)."""
    out: list[tuple[dict[str, Any], str]] = []
    for i in range(ORDERS):
        key, at = f"o-{i}", t0 + i * 50
        placed: dict[str, Any] = {"type": "Placed", "id": key, "at": at}
        for field, menu in (("total", _TOTALS), ("items", _ITEMS), ("note", _NOTES)):
            value = rng.choice(menu)(rng)
            if value is not None:
                placed[field] = value
        out.append((placed, f"{key}-placed"))
        fate = rng.random()
        if fate < 0.4:
            out.append(({"type": "Paid", "id": key, "at": at + 500}, f"{key}-paid"))
        elif fate < 0.6:
            out.append(({"type": "Failed", "id": key, "at": at + 300}, f"{key}-failed"))
    out.sort(key=lambda vo: int(vo[0]["at"]))
    return out


def _produce(bootstrap: str, topic: str, orders: list[tuple[dict[str, Any], str]]) -> None:
    """The records in order, each stamped with its event time (as replay reads them: the
    watermark follows record timestamps)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value, eid in orders:
        producer.produce(
            topic,
            value=jsonexact.dumps(value),
            key=str(value["id"]).encode(),
            headers=[("eid", eid.encode())],
            partition=0,
            timestamp=int(value["at"]),
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "records not delivered"


def _by_id(records: list[Record]) -> dict[str, bytes | None]:
    return {(r.header("observer-id") or b"").decode(): r.value for r in records}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_hostile_values_never_stop_the_observer_nor_swallow_what_replay_publishes(
    stack: Any,
    unique: str,
    tmp_path: Path,
    create_topics: Callable[..., list[str]],
    observer_procs: list[ObserverProcess],
    figures: list[str],
) -> None:
    source, cmds, alerts, dlq, outcomes = (
        f"{unique}.{n}" for n in ("source", "cmds", "alerts", "dlq", "outcomes")
    )
    create_topics([source], 1)
    create_topics([cmds, alerts, dlq, outcomes], 1)
    flow = tmp_path / "hostile.yaml"
    flow.write_text(FLOW.replace("SOURCE", source).replace("CMDS", cmds))
    t0 = (time.time_ns() // 1_000_000) - 600_000  # ten minutes ago: every window has passed
    orders = _orders(random.Random(12), t0)

    # what replay says must be published (run to well past the last window)
    events = tmp_path / "events.jsonl"
    with events.open("wb") as f:
        for value, eid in orders:
            line = {"topic": source, "key": value["id"], "value": value, "timestamp": value["at"]}
            f.write(jsonexact.dumps({**line, "headers": {"eid": eid}}) + b"\n")
    topics = Topics(alerts=alerts, outcomes=outcomes, dlq=dlq)
    until = t0 + ORDERS * 50 + 60_000
    expected: dict[str, list[dict[str, Any]]] = {alerts: [], cmds: [], dlq: []}
    for raw in run_replay(str(flow), str(events), until, [], topics):
        line = orjson.loads(raw)
        if line["topic"] in expected:
            expected[line["topic"]].append(line)
    want = {t: {ln["headers"]["observer-id"] for ln in lines} for t, lines in expected.items()}
    assert len(want[alerts]) > 60 and len(want[cmds]) > 40 and len(want[dlq]) > 20, {
        t: len(ids) for t, ids in want.items()
    }
    assert any("action_errors" in ln["value"] for ln in expected[alerts])

    _produce(stack.bootstrap_servers, source, orders)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    env.update(
        OBSERVER_REDIS_URL=stack.redis_url,
        OBSERVER_KEY_PREFIX=f"{unique}:obs",
        OBSERVER_ALERTS_TOPIC=alerts,
        OBSERVER_OUTCOMES_TOPIC=outcomes,
        OBSERVER_DLQ_TOPIC=dlq,
        OBSERVER_IDLE_GRACE_MS="200",
    )
    args = ("--bootstrap-servers", stack.bootstrap_servers, "--group-id", f"{unique}-g")
    p = ObserverProcess("observer", flow, env, *args)
    observer_procs.append(p)
    p.wait_ready()

    got: dict[str, dict[str, bytes | None]] = {}

    def everything() -> bool:
        for topic in (alerts, cmds, dlq):
            got[topic] = _by_id(consume_all(stack.bootstrap_servers, topic, timeout=2))
        return all(want[t] <= set(got[t]) for t in want)

    wait_for(everything, 120, "every record replay publishes", p)
    rss_kb = _rss_kb(p.pid)
    assert p.running() and "Traceback" not in p.log, p.tail()
    assert p.stop() == 0, p.tail()
    for topic in want:  # nothing more, nothing less
        extra = {i: got[topic][i] for i in set(got[topic]) - want[topic]}
        assert not extra, (topic, [orjson.loads(v or b"null") for v in extra.values()])
    for line in expected[alerts]:  # as replay rendered them (action_errors too), but when
        live = orjson.loads(got[alerts][line["headers"]["observer-id"]] or b"")
        assert live.pop("detected_at") and line["value"].pop("detected_at")  # (wall clock)
        assert live == line["value"]
    lost = sum(len(want[t] - set(got[t])) for t in want)
    figures.append(
        f"hostile values: {len(orders)} records of {ORDERS} orders tried, crashes 0, records "
        f"lost {lost}; published {len(got[alerts])} alerts, {len(got[cmds])} actions, "
        f"{len(got[dlq])} dead letters (as replay); observer's largest RSS {rss_kb // 1024} MB"
    )
