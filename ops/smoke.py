"""Shows the stack is alive: a fresh topic, one record produced and consumed back, Redis PING.

Run by ops/demo (`.venv/bin/python ops/smoke.py`). Connects to OBSERVER_BOOTSTRAP_SERVERS /
OBSERVER_REDIS_URL when set, else to the ops/stack ports (OBSERVER_KAFKA_PORT, OBSERVER_REDIS_PORT).
Exits 0 when everything answered, 1 with the reason otherwise.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable

import redis
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

TIMEOUT_S = 20.0


def bootstrap_servers() -> str:
    port = os.environ.get("OBSERVER_KAFKA_PORT", "9092")
    return os.environ.get("OBSERVER_BOOTSTRAP_SERVERS") or f"127.0.0.1:{port}"


def redis_url() -> str:
    port = os.environ.get("OBSERVER_REDIS_PORT", "6379")
    return os.environ.get("OBSERVER_REDIS_URL") or f"redis://127.0.0.1:{port}/0"


def check_kafka(bootstrap: str) -> str:
    """Creates a topic, produces one record, reads it back, deletes the topic."""
    # log_level 4: no info-level "Purging unserved events" notice when the client is dropped.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})
    brokers = admin.list_topics(timeout=TIMEOUT_S).brokers
    topic = f"observer-smoke-{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        TIMEOUT_S
    )
    try:
        key, value = b"smoke", f"alive at {time.time():.3f}".encode()
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topic, key=key, value=value, headers=[("origin", b"ops/smoke.py")])
        if producer.flush(TIMEOUT_S) != 0:
            raise RuntimeError(f"the record to {topic} was not delivered within {TIMEOUT_S}s")

        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False}
        )
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    raise KafkaException(msg.error())
                if msg.key() != key or msg.value() != value:
                    raise RuntimeError(f"read back {msg.key()!r}={msg.value()!r}, not {value!r}")
                return f"{len(brokers)} broker(s); produced and consumed 1 record on {topic}"
            raise RuntimeError(f"the record did not come back from {topic} within {TIMEOUT_S}s")
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic])[topic].result(TIMEOUT_S)


def check_redis(url: str) -> str:
    """PING, then a SET/GET round trip on a throwaway key."""
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S)
    try:
        if client.ping() is not True:
            raise RuntimeError("PING did not answer PONG")
        key = f"observer-smoke:{uuid.uuid4().hex[:12]}"
        client.set(key, b"alive", ex=60)
        if client.get(key) != b"alive":
            raise RuntimeError("SET/GET did not round-trip")
        client.delete(key)
        return f"PING answered, SET/GET round-tripped (redis {client.info()['redis_version']})"
    finally:
        client.close()


def main() -> int:
    bootstrap, url = bootstrap_servers(), redis_url()
    ok = True
    checks: list[tuple[str, str, Callable[[str], str]]] = [
        ("kafka", bootstrap, check_kafka),
        ("redis", url, check_redis),
    ]
    for name, where, check in checks:
        started = time.monotonic()
        try:
            detail = check(where)
        except Exception as exc:  # report every failure, then exit non-zero
            ok = False
            print(f"{name:6} FAIL  {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            print(f"{name:6} ok    {where}: {detail} ({time.monotonic() - started:.2f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
