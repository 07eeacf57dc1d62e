"""One `observer run` over the fuzzed records: a new source topic, the two flows on it, the
process, and what it left behind once it has processed, committed and published everything
(the dead letters, the outcomes, its metrics, some /instances views, its log)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from observer.config import ObserverConfig
from tests.e2e.conftest import ObserverProcess
from tests.e2e.fuzz.records import PARTITIONS, Rec
from tests.integration.kafka_helpers import Record, consume_all, wait_caught_up

__all__ = ["Run", "metric", "run_observer"]


# Two flows on one topic, with the same type selector: `fuzz-orders` takes key and time from
# the value and the event id from a header; `fuzz-accounts` uses the source defaults (the Kafka
# record key, the record timestamp, topic/partition/offset).
FLOWS = """
flow: fuzz-orders
version: 1
key: order_id
sources:
  orders:
    topic: SOURCE
    type: value.type
    key: value.order_id
    id: header.event_id
    time: value.occurred_at
steps:
  - step: placed
    on: orders.OrderPlaced
    capture: [value.total]
  - step: paid
    on: orders.PaymentCaptured
    within: 1h
  - step: shipped
    on: orders.Shipped
    within: 2h
retain: 7d  # long enough that the verified instances are still there to look at
---
flow: fuzz-accounts
version: 1
sources:
  accounts:
    topic: SOURCE
    type: value.type
steps:
  - step: opened
    on: accounts.AccountOpened
  - step: closed
    on: accounts.AccountClosed
    within: 1h
retain: 7d  # long enough that the verified instances are still there to look at
"""


@dataclass
class Run:
    """What one `observer run` over the records left behind."""

    source: str
    seconds: float
    metrics: str
    dlq: list[Record]
    outcomes: list[Record]
    views: dict[str, httpx.Response]
    log: str


def produce_all(bootstrap: str, topic: str, recs: list[Rec]) -> None:
    """Produces the records in order (idempotent producer) and notes each one's offset."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[str] = []
    now = time.time_ns() // 1_000_000

    def delivered(rec: Rec) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                rec.offset = msg.offset()

        return cb

    for rec in recs:
        headers: list[tuple[str, str | bytes | None]] = list(rec.headers)
        producer.produce(
            topic,
            value=rec.value,
            key=rec.key,
            headers=headers,
            partition=rec.partition,
            timestamp=now,
            on_delivery=delivered(rec),
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "records not delivered"
    assert not errors, errors[:3]
    assert all(r.offset >= 0 for r in recs)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text, 0 when absent."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def wait_for(what: Callable[[], Any], timeout: float, message: str, p: ObserverProcess) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline or not p.running():
            raise AssertionError(f"timed out after {timeout}s waiting for {message}:\n{p.tail()}")
        time.sleep(0.2)


@pytest.fixture
def run_observer(
    stack: Any,
    unique: str,
    tmp_path: Path,
    create_topics: Callable[..., list[str]],
    observer_procs: list[ObserverProcess],
) -> Callable[[list[Rec], list[str]], Run]:
    """`run_observer(records, views)`: produces the records to a new source topic, runs ONE
    `observer run` over them until it committed every offset and published everything, checks
    it is alive and healthy, and stops it with SIGTERM (exit 0)."""

    def run(recs: list[Rec], views: list[str]) -> Run:
        source, dlq, outcomes = (f"{unique}.{n}" for n in ("source", "dlq", "outcomes"))
        create_topics([source], PARTITIONS)
        create_topics([dlq, outcomes, f"{unique}.alerts"], 2)
        flow_file = tmp_path / "fuzz-flows.yaml"
        flow_file.write_text(FLOWS.replace("SOURCE", source))
        produce_all(stack.bootstrap_servers, source, recs)  # read by the observer as a backlog
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
        env.update(
            OBSERVER_REDIS_URL=stack.redis_url,
            OBSERVER_KEY_PREFIX=f"{unique}:obs",  # under f"{unique}:": removed after the test
            OBSERVER_ALERTS_TOPIC=f"{unique}.alerts",
            OBSERVER_OUTCOMES_TOPIC=outcomes,
            OBSERVER_DLQ_TOPIC=dlq,
            OBSERVER_HTTP_HOST="127.0.0.1",
            OBSERVER_IDLE_GRACE_MS="200",
            OBSERVER_COMMIT_INTERVAL_MS="50",
            OBSERVER_KAFKA_SESSION_TIMEOUT_MS="6000",
        )
        group = f"{unique}-observer"
        started = time.monotonic()
        args = ("--bootstrap-servers", stack.bootstrap_servers, "--group-id", group)
        p = ObserverProcess("observer", flow_file, env, *args)
        observer_procs.append(p)
        try:
            p.wait_ready()

            def api(path: str) -> httpx.Response:
                return httpx.get(f"http://127.0.0.1:{p.port}{path}", timeout=5)

            # every record processed and committed (the dead letters before the source
            # offsets, the outcomes before the tracker's), then published: the outputs are
            # whole when read to their end
            cfg = ObserverConfig.load({"group_id": group}, env)
            keyed = cfg.keyed_topic_name() if cfg.routing == "keyed" else None
            try:
                wait_caught_up(
                    stack.bootstrap_servers, group, [source], keyed_topic=keyed, timeout=90
                )
            except TimeoutError as exc:
                raise AssertionError(f"{exc}:\n{p.tail()}") from None
            wait_for(
                lambda: metric(api("/metrics").text, "observer_outbox_depth") == 0,
                30,
                "the outbox to drain",
                p,
            )
            seconds = time.monotonic() - started
            assert p.running(), f"observer run exited ({p.proc.returncode}):\n{p.tail()}"
            assert api("/healthz").json() == {"status": "ok"}
            ready = api("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
            run = Run(
                source,
                seconds,
                api("/metrics").text,
                consume_all(stack.bootstrap_servers, dlq, timeout=30),
                consume_all(stack.bootstrap_servers, outcomes, timeout=30),
                {name: api(f"/instances/{name}") for name in views},
                "",
            )
        finally:
            rc = p.stop()
            if os.environ.get("FUZZ_LOG"):  # the whole log, to look into a failure
                Path(os.environ["FUZZ_LOG"]).write_text(p.log)
        assert rc == 0, f"observer run exited {rc}:\n{p.tail()}"
        run.log = p.log
        return run

    return run
