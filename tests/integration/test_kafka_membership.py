"""Static group membership in the consumer adapter, against the real broker: a process whose
instance id another process took over is fenced by Kafka; the adapter reports its partitions
lost (the runtime then commits nothing of them and stops processing their shards) and stops
with an error that names the cause (docs/running.md, Failover)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from observer.adapters.kafka.consumer import KafkaEventSource
from observer.config import ObserverConfig
from observer.errors import ObserverError
from observer.runtime.watermark import TopicPartition as TP


class Recorder:
    """A rebalance listener that records what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, list[TP]]] = []
        self.owned: set[TP] = set()

    def assigned(self, tps: list[TP]) -> None:
        self.events.append(("assigned", sorted(tps)))
        self.owned.update(tps)

    def revoked(self, tps: list[TP]) -> None:
        self.events.append(("revoked", sorted(tps)))
        self.owned.difference_update(tps)

    def lost(self, tps: list[TP]) -> None:
        self.events.append(("lost", sorted(tps)))
        self.owned.difference_update(tps)

    def commit_done(self, error: str | None, offsets: dict[TP, int]) -> None:
        pass


def poll_until(source: KafkaEventSource, done: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        source.poll(100, 0.1)


@pytest.fixture
def sources() -> Iterator[list[KafkaEventSource]]:
    made: list[KafkaEventSource] = []
    yield made
    for s in made:
        s.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        return [p.offset for p in c.committed(parts, timeout=10)]
    finally:
        c.close()


def test_a_consumer_fenced_by_its_instance_id_loses_its_partitions_and_stops(
    stack: Any, unique: str, create_topics: Callable[..., list[str]], sources: list[Any]
) -> None:
    (topic,) = create_topics(f"{unique}-src", partitions=4)
    config = ObserverConfig.load(
        {"bootstrap_servers": stack.bootstrap_servers, "group_id": unique, "instance_id": "obs-0"},
        {},
    )
    settings = config.consumer_settings()
    assert settings["group.instance.id"] == "obs-0-router"
    everything = sorted((topic, p) for p in range(4))

    first, first_seen = KafkaEventSource(settings), Recorder()
    sources.append(first)
    first.subscribe([topic], first_seen)
    poll_until(first, lambda: sorted(first_seen.owned) == everything)
    first.commit({(topic, 0): 1}, wait=True)

    # a second process started with the same OBSERVER_INSTANCE_ID takes the member over
    second, second_seen = KafkaEventSource(settings), Recorder()
    sources.append(second)
    second.subscribe([topic], second_seen)
    poll_until(second, lambda: sorted(second_seen.owned) == everything)

    with pytest.raises(ObserverError) as fenced:
        poll_until(first, lambda: False)
    message = str(fenced.value)
    assert "obs-0-router" in message and "OBSERVER_INSTANCE_ID" in message, message
    # every partition was reported lost (never revoked, which would commit them), once
    assert first_seen.events == [("assigned", everything), ("lost", everything)]
    with pytest.raises(ObserverError):
        first.poll(100, 0.1)  # it stays stopped
    with pytest.raises(ObserverError):
        first.commit({(topic, 0): 3}, wait=True)  # and Kafka refuses its commits
    first.close()
    assert first_seen.events[-1] == ("lost", everything)  # closing revokes nothing more
    assert committed(stack.bootstrap_servers, unique, topic, 4)[0] == 1

    # the second one goes on as the member
    second.commit({(topic, 0): 2}, wait=True)
    assert committed(stack.bootstrap_servers, unique, topic, 4)[0] == 2
    assert second_seen.events == [("assigned", everything)]


def test_a_fenced_consumer_whose_instance_id_nobody_holds_rejoins(
    stack: Any, unique: str, create_topics: Callable[..., list[str]], sources: list[Any]
) -> None:
    """The fence a consumer brings on itself (a commit from before a rejoin, librdkafka #3437)
    leaves no other member with its instance id: then the adapter reports its partitions
    lost, creates the consumer again and rejoins, rather than stopping the process. Here the
    member that took the id over is gone (closed, its session ended) when the fenced one
    looks, or its session ends while the fenced one asks, which is what the group coordinator
    shows after a self-inflicted fence."""
    from observer.adapters.kafka.consumer import instance_holders

    (topic,) = create_topics(f"{unique}-src", partitions=4)
    config = ObserverConfig.load(
        {"bootstrap_servers": stack.bootstrap_servers, "group_id": unique, "instance_id": "obs-1"},
        {},
    )
    settings = config.consumer_settings()
    everything = sorted((topic, p) for p in range(4))
    first, first_seen = KafkaEventSource(settings), Recorder()
    sources.append(first)
    first.subscribe([topic], first_seen)
    poll_until(first, lambda: sorted(first_seen.owned) == everything)
    first.commit({(topic, 0): 1}, wait=True)
    assert instance_holders(settings, unique, "obs-1-router") == {first._consumer.memberid()}

    second, second_seen = KafkaEventSource(settings), Recorder()
    second.subscribe([topic], second_seen)
    poll_until(second, lambda: sorted(second_seen.owned) == everything)
    taken = instance_holders(settings, unique, "obs-1-router")
    assert taken is not None and taken != {first._consumer.memberid()}
    deadline = time.monotonic() + 30  # its heartbeat was fenced: served, not yet acted on
    while first._fatal is None:
        assert time.monotonic() < deadline, "the first consumer was never fenced"
        for m in first._consumer.consume(num_messages=1, timeout=0.2):
            if m.error() is not None:
                first._message_error(m.error(), m)  # the fence arrives as a message error
    second.close()  # a static member stays in the group until its session ends
    assert instance_holders(settings, unique, "obs-1-router") == taken  # still there
    # the fenced consumer asks again until that session has ended (as after a broker restart,
    # when the coordinator still holds the membership this consumer had before its rejoin)
    poll_until(first, lambda: len(first_seen.events) == 3, timeout=60)  # lost, assigned
    assert first_seen.events == [
        ("assigned", everything),
        ("lost", everything),
        ("assigned", everything),
    ]
    first.commit({(topic, 0): 2}, wait=True)  # the new consumer is the member now
    assert committed(stack.bootstrap_servers, unique, topic, 4)[0] == 2
