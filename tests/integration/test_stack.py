"""The stack itself: records with keys and headers go through the real broker unchanged, and
Redis round-trips values and runs Lua. Proves the fixtures every other integration test uses."""

from __future__ import annotations

from collections.abc import Callable

import redis
from confluent_kafka.admin import AdminClient

from .conftest import Stack
from .kafka_helpers import consume_all, produce, topic_exists


def test_records_keep_keys_values_headers_and_per_key_order(
    stack: Stack, unique: str, create_topics: Callable[..., list[str]], admin: AdminClient
) -> None:
    (topic,) = create_topics(f"{unique}-events", partitions=3)
    assert topic_exists(admin, topic, partitions=3)

    sent = [(f"order-{i % 4}".encode(), f'{{"seq": {i}}}'.encode()) for i in range(20)]
    headers = [("type", b"OrderPlaced"), ("eid", b"e-1"), ("empty", None), ("type", b"again")]
    assert produce(stack.bootstrap_servers, topic, sent, headers=headers) == 20

    got = consume_all(stack.bootstrap_servers, topic, timeout=20)

    assert sorted((r.key, r.value) for r in got) == sorted(sent)
    for record in got:
        assert record.topic == topic
        assert record.headers == (
            ("type", b"OrderPlaced"),
            ("eid", b"e-1"),
            ("empty", None),
            ("type", b"again"),
        )
        assert record.header("type") == b"again"
        assert record.header("missing") is None
        assert record.timestamp_ms > 0
    # The default partitioner sends one key to one partition, in produce order.
    by_key: dict[bytes | None, list[tuple[int, bytes | None]]] = {}
    for record in got:
        by_key.setdefault(record.key, []).append((record.partition, record.value))
    for key, entries in by_key.items():
        assert len({partition for partition, _ in entries}) == 1, key
        assert [v for _, v in entries] == [v for k, v in sent if k == key]


def test_consume_all_waits_for_min_count_and_returns_what_came(
    stack: Stack, unique: str, create_topics: Callable[..., list[str]]
) -> None:
    (topic,) = create_topics(f"{unique}-slow")
    produce(stack.bootstrap_servers, topic, [(b"k", b"one"), (None, b"two")])

    assert [r.value for r in consume_all(stack.bootstrap_servers, topic, min_count=2)] == [
        b"one",
        b"two",
    ]
    assert consume_all(stack.bootstrap_servers, topic, min_count=3, timeout=1.5)[1].key is None


def test_an_empty_topic_reads_back_empty(
    stack: Stack, unique: str, create_topics: Callable[..., list[str]]
) -> None:
    (topic,) = create_topics(f"{unique}-empty", partitions=2)
    assert consume_all(stack.bootstrap_servers, topic, timeout=10) == []


def test_topics_are_auto_created_with_the_stack_default_of_4_partitions(
    stack: Stack, unique: str, admin: AdminClient
) -> None:
    if not stack.kafka_managed:
        return  # an external broker has its own defaults
    topic = f"{unique}-auto"
    produce(stack.bootstrap_servers, topic, [(b"k", b"v")], timeout=30)
    try:
        assert len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions) == 4
        assert [r.value for r in consume_all(stack.bootstrap_servers, topic)] == [b"v"]
    finally:
        admin.delete_topics([topic])


def test_redis_round_trips_under_the_test_prefix_and_runs_lua(
    redis_client: redis.Redis, unique: str
) -> None:
    key = f"{unique}:instance:order-1"
    redis_client.set(key, b"\x00binary\xff")
    assert redis_client.get(key) == b"\x00binary\xff"

    # A compare-and-set, the shape the observer's state writes take.
    script = """
    local current = redis.call('GET', KEYS[1])
    if current == ARGV[1] then
      redis.call('SET', KEYS[1], ARGV[2])
      redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
      return 1
    end
    return 0
    """
    due = f"{unique}:due"
    assert redis_client.eval(script, 2, key, due, b"stale", b"new", 1000) == 0
    assert redis_client.eval(script, 2, key, due, b"\x00binary\xff", b"new", 1000) == 1
    assert redis_client.get(key) == b"new"
    assert redis_client.zrange(due, 0, -1, withscores=True) == [(key.encode(), 1000.0)]
    assert sorted(redis_client.scan_iter(match=f"{unique}:*")) == sorted(
        [key.encode(), due.encode()]
    )


def test_redis_appends_to_its_aof(redis_client: redis.Redis, stack: Stack) -> None:
    if not stack.redis_managed:
        return  # an external server has its own persistence settings
    config = redis_client.config_get("append*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
