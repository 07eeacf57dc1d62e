"""Hostile input in the runtime (issue 12), on in-memory adapters: a record the broker refuses
for good or that is larger than its topic accepts is dead-lettered in its place and never
stops the loop nor stays in the outbox; dead letters fit; action errors are counted and kept in
the history; the slot cache and the webhook queue keep to their byte budgets."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from observer.config import ObserverConfig, topics_from_env
from observer.engine.state import KeySlot
from observer.errors import ConfigError
from observer.record_size import TRUNCATED_HEADER, RecordLimits, header_bytes, record_bytes
from observer.runtime.cache import SlotCache
from observer.runtime.outbox import OutboxRecord, encode_record
from observer.runtime.ports import WriteBatch
from observer.runtime.webhooks import WebhookDispatcher
from tests.unit.test_runtime_loop import FLOW, Observer, observer

TOO_LARGE = "Broker: Message size too large"


@pytest.fixture
def obs(tmp_path: Path) -> Observer:
    return observer(tmp_path)


def _missing(obs: Observer, key: str = "o-1") -> None:
    """An order whose payment never comes: its deadline fires (alert, cancel, webhook)."""
    obs.send("orders", "Placed", key)
    obs.turn(4)
    obs.turn(1, seconds=11.0)
    obs.turn(3)


def test_a_record_the_broker_refuses_for_good_is_dead_lettered_in_its_place(
    obs: Observer,
) -> None:
    obs.world.sink.fail_next(1, TOO_LARGE, final=True)  # the alert of the deadline
    _missing(obs)
    assert obs.alerts() == [] and len(obs.out("cmds")) == 1
    (dead,) = obs.out("observer.dlq")
    headers = dict(dead.headers)
    assert orjson.loads(dead.value)["kind"] == "missing"  # the alert, as it was
    assert headers["observer-error"] == f"the broker refused the record: {TOO_LARGE}".encode()
    assert headers["observer-target-topic"] == b"observer.alerts"
    assert obs.store.outbox_entries() == {}
    assert obs.metrics.records_refused.labels("alert")._value.get() == 1
    assert obs.metrics.publish_failures.labels("alert")._value.get() == 0  # never retried
    obs.turn(20)
    assert len(obs.out("observer.dlq")) == 1 and obs.alerts() == []


def test_an_outbox_entry_too_large_to_publish_is_dead_lettered_at_start(tmp_path: Path) -> None:
    # A record larger than the topic accepts, left in an outbox (by a crash, or by an observer
    # with a larger limit): republishing it must not stop the loop, at this start or the next.
    o = observer(tmp_path, max_record_bytes=20_000)
    keyed = o.world.config.keyed_topic_name()
    source = o.world.keyed_source
    assert source is not None
    o.turn(2)
    source.revoke([(keyed, 1)])
    o.turn(1)
    big = OutboxRecord(
        "oid-big", "action", "cmds", b"k", b"v" * 30_000, (("observer-id", b"oid-big"),)
    )
    o.store.write(WriteBatch(outbox_adds=[(1, "oid-big", encode_record(big))])).result()
    source.assign([(keyed, 1)])
    o.turn(3)
    assert o.out("cmds") == []
    (dead,) = o.out("observer.dlq")
    headers = dict(dead.headers)
    assert headers["observer-target-topic"] == b"cmds"
    assert headers["observer-id"] != b"oid-big" and TRUNCATED_HEADER in headers
    assert dead.value == b"v" * len(dead.value) and 10_000 < len(dead.value) < 20_000
    assert record_bytes(1, len(dead.value), header_bytes(dead.headers)) <= 20_000
    assert o.store.outbox_entries() == {}


def test_a_dead_letter_refused_too_goes_without_its_value_then_is_dropped(obs: Observer) -> None:
    obs.world.sink.fail_next(1, TOO_LARGE, final=True, topic="observer.alerts")
    obs.world.sink.fail_next(2, TOO_LARGE, final=True, topic="observer.dlq")  # and its own
    _missing(obs)
    obs.turn(3)  # the drop is acknowledged after the others: its entry goes with the next write
    assert obs.alerts() == [] and obs.out("observer.dlq") == []
    assert obs.store.outbox_entries() == {}
    assert obs.metrics.records_refused.labels("dlq")._value.get() == 2
    assert obs.metrics.records_refused.labels("dropped")._value.get() == 1


def test_a_source_record_of_a_megabyte_is_dead_lettered_cut_to_fit(obs: Observer) -> None:
    value = b"{" + b"x" * 1_048_500  # fits as it was read, not with the dead-letter headers
    obs.world.produce("orders", value, key=b"big", headers=[("trace", b"t")])
    obs.send("orders", "Placed", "o-2")
    obs.turn(4)
    (dead,) = obs.out("observer.dlq")
    # as a Kafka consumer reads them (the producer sends a str header as UTF-8)
    headers = {k: v.encode() if isinstance(v, str) else v for k, v in dead.headers}
    assert headers["trace"] == b"t" and headers["observer-source-topic"] == b"orders"
    assert TRUNCATED_HEADER in headers and value.startswith(dead.value)
    assert record_bytes(3, len(dead.value), header_bytes(dead.headers)) <= 1_048_588
    assert obs.state("o-2") is not None  # the events after it are applied


def test_an_action_error_is_counted_and_kept_in_the_history(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(
        FLOW.replace('id: "{{ key }}"}}', 'id: "{{ key }}", n: "{{ 1 // 0 }}"}}')
    )
    o = observer(tmp_path)
    _missing(o)
    (alert,) = o.alerts("missing")
    assert [e["action"] for e in alert["action_errors"]] == ["cancel"]
    assert o.out("cmds") == [] and len(o.out("observer.dlq")) == 1
    assert o.metrics.action_errors.labels("shop", "cancel")._value.get() == 1
    history = [orjson.loads(e) for e in o.store.read("shop", "o-1")[1]]
    (note,) = [e for e in history if e["what"] == "action_error"]
    assert note["detail"].startswith("cancel: template '{{ 1 // 0 }}': ZeroDivisionError")


def test_the_slot_cache_keeps_to_its_byte_budget() -> None:
    cache = SlotCache(1000, max_bytes=10_000)
    for i in range(30):
        cache.put(f"s{i}", KeySlot("f", f"k{i}"), b"x" * 500)
    assert cache.bytes <= 10_000 and len(cache) < 30
    assert cache.get("s29") is not None and cache.get("s0") is None
    cache.put("huge", KeySlot("f", "h"), b"x" * 2_000)  # over a tenth of the budget: not kept
    assert cache.get("huge") is None
    cache.put("s29", None, None)
    assert cache.get("s29") == (None, None)
    cache.clear()
    assert cache.bytes == 0


def test_the_webhook_queue_keeps_to_its_byte_budget() -> None:
    dispatcher = WebhookDispatcher(
        lambda url, body, headers: 200, max_queued_bytes=2_500, monotonic=time.monotonic
    )
    for i in range(5):  # not started: every record waits in the queue
        rec = OutboxRecord(f"w{i}", "webhook", None, None, b"b" * 1000, (), "http://h.invalid/")
        dispatcher.submit(0, rec)
    assert dispatcher.pending() == 2
    assert dispatcher.take_done() == [(0, "w2", False), (0, "w3", False), (0, "w4", False)]


def test_record_limits_from_the_configuration() -> None:
    config = ObserverConfig.load({}, {"OBSERVER_MAX_RECORD_BYTES": "2000000"})
    assert config.topics().limits == RecordLimits(2_000_000)
    assert config.producer_settings()["message.max.bytes"] == 2_000_000
    lower = ObserverConfig.load({}, {"OBSERVER_KAFKA_MESSAGE_MAX_BYTES": "500000"})
    assert lower.topics().limits.of("any") == 500_000
    assert lower.producer_settings()["message.max.bytes"] == "500000"
    assert topics_from_env({"OBSERVER_MAX_RECORD_BYTES": "65536"}).limits.of("x") == 65_536
    with pytest.raises(ConfigError, match="OBSERVER_MAX_RECORD_BYTES"):
        topics_from_env({"OBSERVER_MAX_RECORD_BYTES": "100"})
    limits = RecordLimits(1_000, (("small", 500), ("large", 5_000)))
    assert (limits.of("small"), limits.of("large"), limits.of(None)) == (500, 1_000, 1_000)
