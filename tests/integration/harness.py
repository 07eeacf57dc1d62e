"""The harness of the in-process `observer run` tests: one topic set, consumer group and Redis
key prefix per test, a flow with windows of a second or two, and reads of what the observer
published that wait for what a test expects, never a fixed time.

Three ways to wait, by what a test asserts:
- something is published: `wait_for(lambda: ...)` (reads as records arrive, with a bound);
- nothing else was published before a record seen: `read_to_end()` after it (every output
  partition read up to the end offsets of that moment; the observer publishes in order);
- nothing is published for a deadline (a `missing` that must not fire, or not twice):
  `clock_passed(at)` first: a probe order whose deadline comes just after `at` raises
  `missing`, proof that the observer's event-time clock passed `at` and every deadline up to
  there had its turn;
- nothing is published for records read (duplicates, a dead letter): `processed()` first: the
  groups committed every record sent (committed only after the Redis write) and the outbox is
  empty, so whatever they led to is on Kafka.
The probes' records are left out of `out()`, `alerts()` and `outcomes()`.

The test modules import `make` (the fixture) from here; `routing` (conftest.py, or the module)
says how it wires the observer.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from observer.adapters.redis.keys import Keys
from observer.cli import build_service
from observer.config import ObserverConfig
from observer.flows.compiler import load_registry
from observer.runtime.service import Service
from observer.runtime.shards import slot_id
from tests.integration.kafka_helpers import wait_caught_up

__all__ = ["FLOW", "OUT", "Harness", "Out", "make", "now_ms", "outcome_of"]

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: P.orders, type: value.type, key: value.id, id: header.eid}
  pay: {topic: P.pay, type: value.type, key: value.id, id: header.eid}
  ship: {topic: P.ship, type: value.type, key: value.id, id: header.eid}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: PAY_WINDOW
    if_missing: [cancel]
    if_late: [notify]
  - step: shipped
    on: ship.Shipped
    within: 20s
errors:
  - on: pay.Failed
    do: [refund]
    then: comp
paths:
  comp:
    outcome: compensated
    steps:
      - step: refunded
        on: pay.Refunded
        within: 20s
buffer: 30s
retain: 1h
actions:
  cancel:
    publish: {topic: P.cmds, key: "{{ key }}", headers: {type: Cancel}, value: {type: Cancel, id: "{{ key }}"}}
  refund:
    publish: {topic: P.cmds, key: "{{ key }}", headers: {type: Refund}, value: {type: Refund, id: "{{ key }}"}}
  notify:
    alert: {severity: info, summary: "paid late by {{ deviation.late_by }}"}
"""

OUT = ("alerts", "outcomes", "dlq", "cmds")
SOURCES = ("orders", "pay", "ship")
PROBE = "~probe-"  # key prefix of `clock_passed`'s orders
PROBE_AFTER_MS = 300  # a probe's deadline comes this long after the time it proves


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ms(duration: str) -> int:
    """`1500ms`, `3s` -> ms (the pay windows the tests use)."""
    m = re.fullmatch(r"(\d+)(ms|s)", duration)
    assert m, f"pay window {duration!r}: write it as <n>ms or <n>s"
    return int(m.group(1)) * (1 if m.group(2) == "ms" else 1000)


@dataclass
class Out:
    """A record the observer published."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int = 0

    @property
    def json(self) -> Any:
        return orjson.loads(self.value or b"null")

    @property
    def oid(self) -> str:
        return self.headers["observer-id"].decode()

    @property
    def probe(self) -> bool:
        return (self.key or b"").startswith(PROBE.encode())


@dataclass
class Harness:
    """Topics, a flow file, a config and the running service of one test."""

    bootstrap: str
    redis_url: str
    prefix: str
    tmp: Path
    flow_text: str
    create_topics: Callable[..., list[str]]
    extra: dict[str, Any] = field(default_factory=dict)
    pay_window_ms: int = 1500
    service: Service | None = None
    _out: list[Out] = field(default_factory=list)
    _consumer: Consumer | None = None
    _read_to: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset read
    _probes: int = 0

    def __post_init__(self) -> None:
        p = self.prefix
        self.create_topics([f"{p}.{t}" for t in (*SOURCES, *OUT)], 2)
        self.flow_file = self.tmp / f"{p}.yaml"
        self.flow_file.write_text(self.flow_text.replace("P.", f"{p}."))
        self.producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0})

    @property
    def key_prefix(self) -> str:
        """Redis keys live under f"{unique}:" (removed by the `redis_client` fixture)."""
        return f"{self.prefix}:obs"

    def t(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def config(self, **over: Any) -> ObserverConfig:
        p = self.prefix
        flags: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "redis_url": self.redis_url,
            "group_id": f"{p}-observer",
            "key_prefix": self.key_prefix,
            "http_port": 0,
            "http_host": "127.0.0.1",
            "alerts_topic": self.t("alerts"),
            "outcomes_topic": self.t("outcomes"),
            "dlq_topic": self.t("dlq"),
            "idle_grace_ms": 200,
            "tick_interval_ms": 20,
            "commit_interval_ms": 50,
            "kafka": {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"},
        }
        flags.update(self.extra)
        flags.update(over)
        return ObserverConfig.load(flags, {})

    # -- the observer ---------------------------------------------------------------------------

    def start(self, **over: Any) -> Service:
        assert self.service is None
        svc = build_service(
            self.config(**over), load_registry([self.flow_file]), (str(self.flow_file),)
        )
        svc.start()
        assert svc.wait_started(30), f"observer did not start: {svc.error!r}"
        self.service = svc
        return svc

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            assert self.service.join(30), "observer did not stop"
            assert self.service.error is None, self.service.error
            self.service = None

    def api(self, path: str) -> httpx.Response:
        assert self.service is not None and self.service.http_port
        return httpx.get(f"http://127.0.0.1:{self.service.http_port}{path}", timeout=5)

    # -- input ----------------------------------------------------------------------------------

    def send(
        self,
        etype: str,
        key: str,
        at: int,
        eid: str | None = None,
        topic: str | None = None,
        raw: bytes | None = None,
        **value: Any,
    ) -> None:
        topic = topic or {"Placed": "orders", "Shipped": "ship"}.get(etype, "pay")
        body = raw if raw is not None else orjson.dumps({"type": etype, "id": key, **value})
        eid = eid or f"{etype}-{key}-{uuid.uuid4().hex[:6]}"
        self.producer.produce(
            self.t(topic), body, key.encode(), headers=[("eid", eid.encode())], timestamp=at
        )
        self.producer.flush(10)

    # -- output ---------------------------------------------------------------------------------

    def _reader(self) -> Consumer:
        """A consumer of every output partition from the start (assigned: no group to join)."""
        if self._consumer is None:
            c = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"{self.prefix}-reader",
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                }
            )
            topics = c.list_topics(timeout=10).topics
            c.assign(
                [
                    TopicPartition(self.t(n), p, OFFSET_BEGINNING)
                    for n in OUT
                    for p in sorted(topics[self.t(n)].partitions)
                ]
            )
            self._consumer = c
        return self._consumer

    def _read(self, timeout: float = 0.1) -> None:
        for m in self._reader().consume(500, timeout):
            if m.error() is None:
                topic = m.topic() or ""
                self._read_to[(topic, m.partition() or 0)] = (m.offset() or 0) + 1
                self._out.append(
                    Out(
                        topic[len(self.prefix) + 1 :],
                        m.key(),
                        m.value(),
                        {k: v for k, v in m.headers() or []},
                        m.timestamp()[1],
                    )
                )

    def read_to_end(self, timeout: float = 20) -> None:
        """Reads every output partition up to its end offset of now: afterwards `out()` holds
        everything published before this call (what a record already seen proves was)."""
        c = self._reader()
        ends = {}
        for tp in c.assignment():
            _low, high = c.get_watermark_offsets(tp, timeout=10, cached=False)
            ends[(tp.topic, tp.partition)] = high
        deadline = time.monotonic() + timeout
        while any(self._read_to.get(tp, 0) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"outputs not read to {ends} within {timeout}s")
            self._read()

    def out(self, topic: str | None = None) -> list[Out]:
        """Records read so far (the probes' left out), after reading what has come."""
        self._read()
        return [o for o in self._out if (topic is None or o.topic == topic) and not o.probe]

    def wait_for(self, what: Callable[[], Any], timeout: float = 20, message: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = what()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {message or what}; published: {[(o.topic, o.key, o.value) for o in self._out]}"
                )
            time.sleep(0.05)

    def alerts(self, kind: str | None = None) -> list[Out]:
        return [o for o in self.out("alerts") if kind is None or o.json["kind"] == kind]

    def outcomes(self) -> list[Out]:
        return self.out("outcomes")

    # -- proofs before asserting that nothing (more) was published ------------------------------

    def clock_passed(self, at: int, timeout: float = 30) -> None:
        """Waits until the observer's event-time clock has passed `at` (ms) and the deadlines up
        to there have fired and been published: a probe order raises `missing` (the flow's
        `paid`) PROBE_AFTER_MS after `at`, in a later tick than theirs (the watermark follows
        the wall clock in ticks of 20 ms here: no record stamped later is sent). Reads the
        outputs to their end after it."""
        self._probes += 1
        key = f"{PROBE}{self._probes}"
        self.send("Placed", key, at + PROBE_AFTER_MS - self.pay_window_ms)
        self.wait_for(
            lambda: self._published("alerts", key),
            timeout,
            f"the probe {key}'s missing payment (the clock passing {at})",
        )
        self.read_to_end()

    def _published(self, topic: str, key: str) -> bool:
        self._read()
        return any(o.topic == topic and o.key == key.encode() for o in self._out)

    def processed(self, timeout: float = 60) -> None:
        """Waits until the observer has processed and committed every record sent so far and
        its outbox is empty (`kafka_helpers.wait_caught_up`), then reads the outputs to their
        end: what those records made it publish is all in `out()`."""
        cfg = self.config()
        keyed = cfg.keyed_topic_name() if cfg.routing == "keyed" else None
        sources = [self.t(n) for n in SOURCES]
        wait_caught_up(self.bootstrap, cfg.group_id, sources, keyed_topic=keyed, timeout=timeout)
        if self.service is not None:
            self.wait_for(
                lambda: re.search(r"^observer_outbox_depth 0\.0$", self.api("/metrics").text, re.M),
                timeout,
                "an empty outbox",
            )
        self.read_to_end()

    # -- Redis ----------------------------------------------------------------------------------

    def redis_keys(self) -> list[bytes]:
        r = redis.Redis.from_url(self.redis_url)
        return list(r.scan_iter(f"{self.key_prefix}:*", count=1000))

    def slot_at(self, flow: str, key: str) -> tuple[str, bytes]:
        """(bucket hash, field) where the store keeps the slot of (flow, key)."""
        r = redis.Redis.from_url(self.redis_url)
        try:
            shards, buckets = r.hmget(Keys(self.key_prefix, 1).meta(), ["shards", "buckets"])
        finally:
            r.close()
        keys = Keys(self.key_prefix, int(shards), int(buckets))
        sid = slot_id(flow, key)
        return keys.bucket(keys.shard_of(sid), sid), keys.field(sid)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._consumer is not None:
                self._consumer.close()
            self.producer.flush(5)


@pytest.fixture
def make(
    routing: str,
    stack: Any,
    unique: str,
    tmp_path: Path,
    create_topics: Callable[..., list[str]],
    redis_client: redis.Redis,
) -> Iterator[Callable[..., Harness]]:
    """`make(flow=FLOW, pay_window="1500ms", **config)`: the harness of one observer setup."""
    made: list[Harness] = []

    def factory(flow: str = FLOW, pay_window: str = "1500ms", **extra: Any) -> Harness:
        prefix = unique if not made else f"{unique}-{len(made)}"
        h = Harness(
            stack.bootstrap_servers,
            stack.redis_url,
            prefix,
            tmp_path,
            flow.replace("PAY_WINDOW", pay_window),
            create_topics,
            {"routing": routing, **extra},
            _ms(pay_window),
        )
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()


def outcome_of(h: Harness, key: str) -> dict[str, Any]:
    return h.wait_for(
        lambda: next((o.json for o in h.outcomes() if o.key == key.encode()), None),
        message=f"outcome of {key}",
    )
