"""`observer run` in-process against the real broker and redis-server: one topic set, consumer
group and Redis key prefix per test; flows with windows of a second or two (the harness, and
how a test waits for what it asserts: tests/integration/harness.py)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from observer.adapters.redis.keys import pack_value, unpack_value
from observer.cli import build_service
from observer.flows.compiler import load_registry
from tests.integration.harness import FLOW, Harness, make, now_ms, outcome_of

pytestmark = pytest.mark.timeout(120)

__all__ = ["make"]  # the fixture, with `routing` below


@pytest.fixture(params=["keyed", "direct"])
def routing(request: pytest.FixtureRequest) -> str:
    """Every flow test runs with both routings (through the keyed topic, and in memory)."""
    return str(request.param)


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
    published = 'observer_published_total{category="outcome"} 1.0'  # counted once acked
    metrics = h.wait_for(
        lambda: published in (text := h.api("/metrics").text) and text, message=published
    )
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
    h.clock_passed(t + 1_500)  # past the payment window: a completed order raises nothing
    assert h.alerts() == [] and h.out("cmds") == [] and len(h.outcomes()) == 1


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
    h.clock_passed(t + 1_500)  # the duplicate opened no second deadline
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
    h.wait_for(h.alerts, message="the late alert")
    h.read_to_end()  # ended: nothing more can come for o3
    (late,) = h.alerts()
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
    (err,) = h.wait_for(h.alerts, message="the error alert")
    assert err.json["kind"] == "error" and err.json["step"] is None
    (refund,) = h.wait_for(lambda: h.out("cmds"))
    assert refund.json == {"type": "Refund", "id": "o4"}
    h.clock_passed(t + 1_500)  # the cancelled payment step raises nothing
    assert len(h.alerts()) == 1 and len(h.out("cmds")) == 1


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
    h.read_to_end()  # an alert of o5 would have come before its outcome
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
    h.processed()  # the repeats after the outcome too
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
    h.processed()
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
        assert len(_Hook.got) == 2  # delivered: nothing left to post
        published = 'observer_published_total{category="webhook"} 1.0'  # counted once acked
        h.wait_for(lambda: published in h.api("/metrics").text, message=published)
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
    h.clock_passed(now_ms())
    ids = [a.oid for a in h.alerts()]
    assert [a.key for a in h.alerts()] == [b"r1"] and len(set(ids)) == len(ids) == 1
    assert len(h.out("cmds")) == 1


def test_a_restarted_observer_behind_the_wall_clock_raises_no_false_missing(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.start()  # attach once, then stop: the group exists with its offsets
    h.stop()
    t = now_ms() - 10_000  # the wall clock is past every payment window already
    for i in range(30):  # all on time, produced while the observer is down
        h.send("Placed", f"w{i}", t + i)
    for i in range(30):
        h.send("Paid", f"w{i}", t + i + 500)
        h.send("Shipped", f"w{i}", t + i + 800)
    h.start()
    h.wait_for(lambda: len(h.outcomes()) == 30, message="30 outcomes")
    h.read_to_end()  # a false missing would have come before its order's outcome
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
    h.read_to_end()  # an alert would have come before its order's outcome
    assert h.alerts() == []
