"""`observer run` in-process against the real broker and redis-server: one topic set, consumer
group and Redis key prefix per test; flows with windows of a second or two."""

from __future__ import annotations

import http.server
import threading
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
from confluent_kafka import Consumer, Producer, TopicPartition

from observer.adapters.redis.keys import Keys, pack_value, unpack_value
from observer.cli import build_service
from observer.config import ObserverConfig
from observer.flows.compiler import load_registry
from observer.runtime.service import Service
from observer.runtime.shards import slot_id

pytestmark = pytest.mark.timeout(120)

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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Out:
    """A record the observer published."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @property
    def json(self) -> Any:
        return orjson.loads(self.value or b"null")

    @property
    def oid(self) -> str:
        return self.headers["observer-id"].decode()


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
    service: Service | None = None
    _out: list[Out] = field(default_factory=list)
    _consumer: Consumer | None = None

    def __post_init__(self) -> None:
        p = self.prefix
        self.create_topics([f"{p}.{t}" for t in ("orders", "pay", "ship", *OUT)], 2)
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

    # -- input and output -----------------------------------------------------------------------

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

    def _read(self) -> None:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"{self.prefix}-reader",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
            self._consumer.subscribe([self.t(n) for n in OUT])
        for m in self._consumer.consume(500, 0.1):
            if m.error() is None:
                topic = m.topic() or ""
                self._out.append(
                    Out(
                        topic[len(self.prefix) + 1 :],
                        m.key(),
                        m.value(),
                        {k: v for k, v in m.headers() or []},
                    )
                )

    def out(self, topic: str | None = None) -> list[Out]:
        self._read()
        return [o for o in self._out if topic is None or o.topic == topic]

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

    def quiet(self, seconds: float) -> None:
        """Keep reading the output for a while (to be sure nothing more comes)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._read()

    def alerts(self, kind: str | None = None) -> list[Out]:
        return [o for o in self.out("alerts") if kind is None or o.json["kind"] == kind]

    def outcomes(self) -> list[Out]:
        return self.out("outcomes")

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


@pytest.fixture(params=["keyed", "direct"])
def routing(request: pytest.FixtureRequest) -> str:
    """Every flow test runs with both routings (through the keyed topic, and in memory)."""
    return str(request.param)


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


# -- the flows --------------------------------------------------------------------------------------


def test_happy_path_publishes_completed_and_no_alert(make: Callable[..., Harness]) -> None:
    h = make()
    h.start()
    t = now_ms()
    h.send("Placed", "o1", t)
    h.send("Paid", "o1", t + 300)
    h.send("Shipped", "o1", t + 600)
    out = outcome_of(h, "o1")
    assert (
        out["outcome"] == "completed"
        and out["deviations"] == []
        and set(out["steps"]) == {"placed", "paid", "shipped"}
    )
    assert out["duration_ms"] == 600
    (rec,) = h.outcomes()
    assert rec.key == b"o1" and len(rec.oid) == 32
    h.quiet(2.0)  # past the payment window
    assert h.alerts() == [] and h.out("cmds") == []
    metrics = h.api("/metrics").text
    assert f'observer_events_total{{outcome="applied",topic="{h.t("orders")}"}} 1.0' in metrics
    assert 'observer_instances_ended_total{flow="shop",outcome="completed"} 1.0' in metrics
    assert 'observer_published_total{category="outcome"} 1.0' in metrics
    assert 'observer_step_latency_seconds_count{flow="shop",step="paid"} 1.0' in metrics
    for name in (
        "observer_consumer_lag",
        "observer_batch_duration_seconds",
        "observer_commit_duration_seconds",
        "observer_outbox_depth",
        "observer_deadlines_overdue_seconds",
        "observer_open_instances",
    ):
        assert name in metrics
    assert h.api("/healthz").json() == {"status": "ok"}
    assert h.api("/readyz").json()["ready"] is True


def test_missing_payment_raises_one_alert_and_the_command(make: Callable[..., Harness]) -> None:
    h = make()
    h.start()
    t = now_ms()
    h.send("Placed", "o2", t, eid="p-o2")
    h.send("Placed", "o2", t, eid="p-o2")  # the same event again: nothing more
    alert = h.wait_for(lambda: h.alerts("missing"), message="missing alert")[0]
    cmd = h.wait_for(lambda: h.out("cmds"), message="cancel command")[0]
    assert alert.key == b"o2" and cmd.key == b"o2"
    a = alert.json
    assert (a["flow"], a["version"], a["key"], a["kind"], a["step"], a["severity"]) == (
        "shop",
        1,
        "o2",
        "missing",
        "paid",
        "critical",
    )
    assert (
        a["observed_at"] is None and a["deadline"] is not None and a["detected_at"] >= a["deadline"]
    )
    assert cmd.json == {"type": "Cancel", "id": "o2"} and cmd.headers["type"] == b"Cancel"
    assert len(alert.oid) == 32 and len(cmd.oid) == 32 and alert.oid != cmd.oid
    h.quiet(1.0)
    assert len(h.alerts()) == 1 and len(h.out("cmds")) == 1
    view = h.api("/instances/shop/o2").json()
    assert view["state"] == "open" and [d["kind"] for d in view["deviations"]] == ["missing"]
    assert {a["observer_id"] for a in view["actions"]} == {alert.oid, cmd.oid}


def test_late_payment_raises_late_and_no_missing(make: Callable[..., Harness]) -> None:
    h = make()
    t = now_ms() - 10_000  # produced before the observer runs: read as a backlog
    h.send("Placed", "o3", t)
    h.send("Paid", "o3", t + 2_000)
    h.send("Shipped", "o3", t + 2_500)
    h.start()
    out = outcome_of(h, "o3")
    assert out["outcome"] == "completed" and out["deviations"] == ["late"]
    # the alert and the outcome are on different topics: either may be read first
    (late,) = h.wait_for(h.alerts, message="the late alert")
    a = late.json
    assert (a["kind"], a["step"], a["severity"], a["late_by_ms"]) == ("late", "paid", "info", 500)
    assert a["summary"] == "paid late by 500ms"
    assert h.out("cmds") == []


def test_payment_failure_switches_to_compensation(make: Callable[..., Harness]) -> None:
    h = make()
    h.start()
    t = now_ms()
    h.send("Placed", "o4", t)
    h.send("Failed", "o4", t + 100)
    h.send("Refunded", "o4", t + 400)
    out = outcome_of(h, "o4")
    assert out["outcome"] == "compensated" and out["deviations"] == ["error"]
    (err,) = h.wait_for(h.alerts, message="the error alert")  # another topic than the outcome
    assert err.json["kind"] == "error" and err.json["step"] is None
    (refund,) = h.wait_for(lambda: h.out("cmds"))
    assert refund.json == {"type": "Refund", "id": "o4"}
    h.quiet(2.0)  # the cancelled payment step raises nothing
    assert len(h.alerts()) == 1


def test_early_payment_read_before_the_order_is_buffered_without_deviation(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.start()
    t = now_ms()
    h.send("Paid", "o5", t + 200)  # read first, from another topic
    view = h.wait_for(
        lambda: (r := h.api("/instances/shop/o5")).status_code == 200 and r.json(),
        message="buffered event",
    )
    assert view["state"] == "buffering" and [b["type"] for b in view["buffered"]] == ["Paid"]
    h.send("Placed", "o5", t)
    h.send("Shipped", "o5", t + 300)
    out = outcome_of(h, "o5")
    assert out["outcome"] == "completed" and out["deviations"] == []
    h.quiet(0.5)
    assert h.alerts() == []


def test_duplicates_change_nothing(make: Callable[..., Harness]) -> None:
    h = make()
    h.start()
    t = now_ms()
    h.send("Placed", "o6", t, eid="e1")
    h.send("Paid", "o6", t + 100, eid="e2")
    h.send("Paid", "o6", t + 100, eid="e2")
    h.send("Shipped", "o6", t + 200, eid="e3")
    h.send("Shipped", "o6", t + 200, eid="e3")
    h.send("Placed", "o6", t, eid="e1")
    outcome_of(h, "o6")
    h.quiet(1.0)
    assert len(h.outcomes()) == 1 and h.alerts() == [] and h.out("cmds") == []


def test_bad_records_go_to_the_dlq_and_the_ones_after_them_are_processed(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.start()
    t = now_ms()
    h.send("Placed", "o7", t, raw=b"{not json", eid="bad-1")
    h.send("Placed", "o7", t, raw=b'{"id": "o7"}', eid="bad-2")  # no type
    h.send("Placed", "o7", t)
    h.send("Paid", "o7", t + 10)
    h.send("Shipped", "o7", t + 20)
    assert outcome_of(h, "o7")["outcome"] == "completed"
    dead = h.wait_for(lambda: len(h.out("dlq")) >= 2 and h.out("dlq"))
    assert [d.value for d in dead] == [b"{not json", b'{"id": "o7"}']
    first = dead[0]
    assert first.key == b"o7" and first.headers["eid"] == b"bad-1"
    assert first.headers["observer-source-topic"] == h.t("orders").encode()
    assert (
        b"cannot decode json" in first.headers["observer-error"]
        and b"no event type" in dead[1].headers["observer-error"]
    )
    assert int(first.headers["observer-source-offset"]) + 1 == int(
        dead[1].headers["observer-source-offset"]
    )
    assert first.oid != dead[1].oid
    metrics = h.api("/metrics").text
    assert f'observer_dead_letters_total{{topic="{h.t("orders")}"}} 2.0' in metrics


def test_an_event_that_fails_past_routing_dead_letters_its_original_record(
    make: Callable[..., Harness], redis_client: redis.Redis
) -> None:
    """The tracker only has the routed event; the dead letter must still be the source record
    as it was (read again by its coordinates), with the reason in headers."""
    h = make()
    h.start(slot_cache_size=0)
    t = now_ms()
    h.send("Placed", "o8", t)
    h.wait_for(lambda: h.api("/instances/shop/o8").status_code == 200, message="o8 stored")
    bucket, field = h.slot_at("shop", "o8")
    due, _state = unpack_value(redis_client.hget(bucket, field))
    redis_client.hset(bucket, field, pack_value(due, b"junk"))  # state the tracker cannot decode
    h.send("Paid", "o8", t + 10, eid="paid-o8", note="kept as it was")
    (dead,) = h.wait_for(lambda: h.out("dlq"), message="dead letter of Paid")
    assert orjson.loads(dead.value) == {"type": "Paid", "id": "o8", "note": "kept as it was"}
    assert dead.key == b"o8" and dead.headers["eid"] == b"paid-o8"
    assert dead.headers["observer-source-topic"] == h.t("pay").encode()
    assert b"processing failed" in dead.headers["observer-error"]
    h.quiet(0.5)
    assert len(h.out("dlq")) == 1


class _Hook(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []
    got: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_is_posted_and_retried_after_a_500(make: Callable[..., Harness]) -> None:
    _Hook.answers = [500]
    _Hook.got = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks/oncall"
        flow = (
            FLOW.replace("if_missing: [cancel]", "if_missing: [cancel, page]")
            + f'  page:\n    webhook: {{url: "{url}", severity: critical}}\n'
        )
        h = make(flow, webhook_backoff_ms=100)
        h.start()
        h.send("Placed", "o8", now_ms())
        h.wait_for(lambda: len(_Hook.got) >= 2, message="webhook retried")
        (first_headers, first_body), (headers, body) = _Hook.got[:2]
        assert body == first_body and headers["observer-id"] == first_headers["observer-id"]
        posted = orjson.loads(body)
        assert (posted["kind"], posted["step"], posted["key"], posted["severity"]) == (
            "missing",
            "paid",
            "o8",
            "critical",
        )
        assert headers["content-type"] == "application/json"
        (alert,) = h.wait_for(h.alerts, message="the alert")
        assert headers["observer-id"] != alert.oid  # the webhook is its own record
        # once delivered, it leaves the outbox
        h.wait_for(lambda: not any(b":outbox" in k for k in h.redis_keys()), message="empty outbox")
        h.quiet(0.5)
        assert len(_Hook.got) == 2
        assert 'observer_published_total{category="webhook"} 1.0' in h.api("/metrics").text
    finally:
        server.shutdown()


def test_restart_continues_open_instances_and_fires_the_deadline_once(
    make: Callable[..., Harness],
) -> None:
    h = make(pay_window="3s")
    h.start()
    t = now_ms()
    h.send("Placed", "r1", t)  # will miss its payment
    h.send("Placed", "r2", t)  # will be paid after the restart
    h.wait_for(lambda: h.api("/instances/shop/r2").status_code == 200, message="r2 stored")
    h.wait_for(lambda: h.api("/instances/shop/r1").status_code == 200, message="r1 stored")
    h.stop()
    h.start()
    h.send("Paid", "r2", t + 1_000)
    h.send("Shipped", "r2", t + 1_200)
    assert outcome_of(h, "r2")["outcome"] == "completed"
    h.wait_for(lambda: h.alerts("missing"), timeout=15, message="missing r1")
    h.stop()
    h.start()  # and once more: nothing fires twice
    h.quiet(1.5)
    ids = [a.oid for a in h.alerts()]
    assert [a.key for a in h.alerts()] == [b"r1"] and len(set(ids)) == len(ids) == 1
    assert len(h.out("cmds")) == 1


def test_a_restarted_observer_behind_the_wall_clock_raises_no_false_missing(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.start()  # attach once, then stop: the group exists with its offsets
    h.stop()
    t = now_ms()
    for i in range(30):  # all on time, produced while the observer is down
        h.send("Placed", f"w{i}", t + i)
    for i in range(30):
        h.send("Paid", f"w{i}", t + i + 500)
        h.send("Shipped", f"w{i}", t + i + 800)
    time.sleep(2.0)  # the wall clock moves past every payment window
    h.start()
    h.wait_for(lambda: len(h.outcomes()) == 30, message="30 outcomes")
    h.quiet(0.5)
    assert h.alerts() == [] and h.out("cmds") == []
    assert {o.json["outcome"] for o in h.outcomes()} == {"completed"}


def test_instances_endpoint_answers_for_a_live_order(make: Callable[..., Harness]) -> None:
    h = make(pay_window="20s")
    h.start()
    t = now_ms()
    h.send("Placed", "o9", t)
    view = h.wait_for(
        lambda: (r := h.api("/instances/shop/o9")).status_code == 200 and r.json(), message="o9"
    )
    assert (view["state"], view["version"], view["path"], view["outcome"]) == (
        "open",
        1,
        "main",
        None,
    )
    assert [(s["step"], s["status"]) for s in view["steps"]] == [
        ("placed", "observed"),
        ("paid", "waiting"),
        ("shipped", "not armed"),
    ]
    assert [(p["kind"], p["step"]) for p in view["pending"]][:1] == [("missing", "paid")]
    assert view["deviations"] == [] and view["buffered"] == []
    assert h.api("/instances/shop/unknown").status_code == 404
    assert h.api("/instances/nope/o9").status_code == 404
    flows = h.api("/flows").json()
    assert flows[0]["flow"] == "shop" and flows[0]["newest"] == 1


def test_offsets_are_committed_after_the_batch_is_stored(make: Callable[..., Harness]) -> None:
    h = make()
    h.start()
    t = now_ms()
    for i in range(20):
        h.send("Placed", f"c{i}", t)
    h.wait_for(lambda: all(h.api(f"/instances/shop/c{i}").status_code == 200 for i in (0, 19)))
    h.stop()
    c = Consumer({"bootstrap.servers": h.bootstrap, "group.id": f"{h.prefix}-observer"})
    try:
        parts = [TopicPartition(h.t("orders"), p) for p in (0, 1)]
        committed = c.committed(parts, timeout=10)
        ends = [c.get_watermark_offsets(p, timeout=10)[1] for p in parts]
    finally:
        c.close()
    assert [p.offset if p.offset >= 0 else 0 for p in committed] == ends and sum(ends) == 20


def test_a_prefix_keeps_its_shard_count(stack: Any, unique: str, redis_client: redis.Redis) -> None:
    from observer.adapters.redis.keys import Keys
    from observer.adapters.redis.store import RedisStateStore

    a = RedisStateStore(stack.redis_url, Keys(f"{unique}:lease", 4))
    try:
        a.open(4, {})
        with pytest.raises(Exception, match="holds state for 4 shards"):
            RedisStateStore(stack.redis_url, Keys(f"{unique}:lease", 8)).open(8, {})
    finally:
        a.close()


def test_a_prefix_keeps_its_bucket_count(make: Callable[..., Harness]) -> None:
    """OBSERVER_STATE_BUCKETS reaches the store, and a restart with another count is refused
    (its slots would be looked for in the wrong hashes)."""
    h = make()
    h.start(state_buckets=8)
    t = now_ms()
    h.send("Placed", "b1", t)
    h.wait_for(lambda: h.api("/instances/shop/b1").status_code == 200, message="b1 stored")
    assert any(k.endswith(b":b:shop:" + str(n).encode()) for k in h.redis_keys() for n in range(8))
    h.stop()
    svc = build_service(
        h.config(state_buckets=16), load_registry([h.flow_file]), (str(h.flow_file),)
    )
    svc.start()
    try:
        assert not svc.wait_started(10)
    finally:
        svc.stop()
        assert svc.join(30)
    assert "buckets" in str(svc.error) and "8" in str(svc.error), svc.error


def test_without_a_slot_cache_every_batch_sees_the_writes_before_it(
    make: Callable[..., Harness],
) -> None:
    """With no slot cache every slot is loaded, over the store's second connection, and tiny
    batches put a key's events in consecutive batches: each load must see the write before it.
    (Redis runs commands one at a time, so a load sent after a write is rarely ahead of it; the
    loop still waits for a write before loading a slot it touched: a large write may not have
    been read whole when the load arrives.)"""
    h = make()
    h.start(slot_cache_size=0, batch_size=2)
    t = now_ms()
    keys = [f"nc{i}" for i in range(25)]
    for k in keys:
        h.send("Placed", k, t)
        h.send("Paid", k, t + 100)
        h.send("Shipped", k, t + 200)
    done = h.wait_for(
        lambda: len(h.outcomes()) >= len(keys) and h.outcomes(), timeout=30, message="outcomes"
    )
    assert sorted(o.key for o in done) == sorted(k.encode() for k in keys)
    assert {o.json["outcome"] for o in done} == {"completed"}
    h.quiet(1.0)
    assert h.alerts() == []
