"""The web console's reads from the real Redis (`RedisConsoleStore`) and its reader of the real
alerts topic (`KafkaAlertFeed`)."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from confluent_kafka import Producer

from observer.adapters.kafka.alerts_feed import KafkaAlertFeed
from observer.adapters.redis.console import RedisConsoleStore
from observer.adapters.redis.keys import Keys, encode_key, pack_value
from observer.adapters.redis.query import RedisSlotReader
from observer.adapters.redis.tally import RedisTally
from observer.console.service import ConsoleData
from observer.engine.codec import encode_slot
from observer.engine.core import Engine
from observer.engine.state import Event, KeySlot
from observer.flows.compiler import load_registry
from observer.redis_settings import parse_redis_url
from observer.runtime.query import InstanceQuery
from tests.waiting import wait_until


def test_counts_slots_and_the_shared_count_from_redis(
    stack: Any, unique: str, redis_client: redis.Redis
) -> None:
    prefix = f"{unique}:state"
    settings = parse_redis_url(stack.redis_url)
    tally = RedisTally(settings, prefix)
    store = RedisConsoleStore(settings, prefix, shards=4, buckets=8)
    try:
        minute = 29_000_000  # a day is 1440 minutes: days 20138 and 20139
        tally.add(
            {
                minute: {("slo", "shop", "good", ""): 3, ("lat", "shop", "paid", "4"): 2},
                minute + 1440: {("slo", "shop", "bad", ""): 1, ("slo", "shop", "good", ""): 1},
            }
        )
        got = store.tally(minute, minute)
        assert got == {minute: {("slo", "shop", "good", ""): 3, ("lat", "shop", "paid", "4"): 2}}
        day = minute // 1440
        assert store.slo_days(day, day + 1) == {"shop": {"good": 4, "bad": 1}}
        assert store.slo_days(day + 1, day + 1) == {"shop": {"good": 1, "bad": 1}}
        assert 0 < redis_client.ttl(Keys(prefix, 1).slo_day(day)) <= 366 * 86_400

        keys = Keys(prefix, 4, 8)
        for key in ("o-1", "o-2", "6f1c1f4e-4f1c-4a57-9d5e-0123456789ab"):
            sid = f"shop:{key}"
            bucket = keys.bucket(keys.shard_of(sid), sid)
            redis_client.hset(bucket, encode_key(key), pack_value(None, f"state {key}".encode()))
        redis_client.hset(keys.bucket(0, "other:x"), b"x", pack_value(None, b"other"))
        redis_client.hset(keys.stats(), "open:shop", 3)
        found = dict(store.slots("shop", 100))
        assert found == {
            "o-1": b"state o-1",
            "o-2": b"state o-2",
            "6f1c1f4e-4f1c-4a57-9d5e-0123456789ab": b"state 6f1c1f4e-4f1c-4a57-9d5e-0123456789ab",
        }
        assert len(list(store.slots("shop", 2))) == 2
        assert store.open_counts() == {"shop": 3}

        assert store.cached_waiting("shop") is None
        assert store.claim_count("shop", 60_000)
        assert not store.claim_count("shop", 60_000)  # one process of the group counts
        store.store_waiting("shop", b'{"n": 1}', 60_000)
        assert store.cached_waiting("shop") == b'{"n": 1}'
    finally:
        store.close()
        tally.close()


def test_the_alert_feed_follows_the_alerts_topic(
    stack: Any, unique: str, create_topics: Any
) -> None:
    topic = f"{unique}-alerts"
    create_topics([topic], partitions=2)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for i in range(5):
        record = {"flow": "shop", "kind": "missing", "key": f"o-{i}", "step": "paid"}
        producer.produce(topic, orjson.dumps(record), f"o-{i}".encode(), timestamp=1_000 + i)
    assert producer.flush(10) == 0
    feed = KafkaAlertFeed({"bootstrap.servers": stack.bootstrap_servers}, topic, tail=3)
    try:
        first = feed.recent()  # the tail: at most 3 per partition, newest first
        assert 3 <= len(first) <= 5
        assert [r["key"] for r in first] == sorted((r["key"] for r in first), reverse=True)
        producer.produce(topic, orjson.dumps({"flow": "shop", "kind": "late", "key": "o-9"}))
        assert producer.flush(10) == 0
        wait_until(
            lambda: any(r["key"] == "o-9" for r in feed.recent()), 20, "the new alert in the feed"
        )
        assert feed.recent()[0]["key"] == "o-9"
    finally:
        feed.close()


FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id, time: value.at}
  pay: {topic: pay, type: value.type, key: value.id, time: value.at}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 10s
"""


def test_two_processes_serve_the_same_count_made_once(
    stack: Any, unique: str, redis_client: redis.Redis, tmp_path: Any
) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    registry = load_registry([tmp_path / "flow.yaml"])
    engine = Engine(registry)
    prefix = f"{unique}:state"
    keys = Keys(prefix, 4, 8)
    t0 = 1_800_000_000_000
    for i in range(30):  # 30 placed, 10 of them paid: 20 wait at `paid`, 5 of them overdue
        key = f"o-{i:02d}"
        slot = KeySlot("shop", key)
        at = t0 + (0 if i < 5 else 8_000)
        engine.apply(slot, Event("orders", "Placed", key, f"p{i}", at), at)
        if i >= 20:
            engine.apply(slot, Event("pay", "Paid", key, f"q{i}", at + 1), at + 1)
        sid = f"shop:{key}"
        redis_client.hset(
            keys.bucket(keys.shard_of(sid), sid),
            encode_key(key),
            pack_value(None, encode_slot(slot)),
        )
    settings = parse_redis_url(stack.redis_url)
    stores = [RedisConsoleStore(settings, prefix, 4, 8) for _ in range(2)]
    reader = RedisSlotReader(settings, prefix, shards=4, buckets=8)
    now = [t0 + 12_000]
    try:
        a, b = (
            ConsoleData(InstanceQuery(registry, reader), s, lambda: now[0], refresh_ms=60_000)
            for s in stores
        )
        first = a.step_instances("shop", "paid")
        now[0] += 1_000  # the other process asks a second later: the group's count is fresh
        second = b.step_instances("shop", "paid")
        assert first == second
        assert (first["waiting"], first["overdue"]) == (20, 5)
        assert [i["key"] for i in first["instances"][:5]] == [f"o-{i:02d}" for i in range(5)]
        assert b.waiting("shop")["computed_at_ms"] == t0 + 12_000  # counted once, by a
    finally:
        reader.close()
        for s in stores:
            s.close()
