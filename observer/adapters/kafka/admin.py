"""Topic checks and creation with the Kafka AdminClient."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from observer.errors import ConfigError, ObserverError

__all__ = ["ensure_keyed_topic", "ensure_topics", "existing_topics", "record_limits"]

log = logging.getLogger(__name__)

_DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED}


def _admin(settings: Mapping[str, Any]) -> AdminClient:
    conf = dict(settings)
    conf["logger"] = logging.getLogger("observer.kafka.admin")
    return AdminClient(conf)


def existing_topics(settings: Mapping[str, Any], timeout_s: float = 10.0) -> set[str]:
    """Names of the topics in the cluster. Raises ObserverError if it does not answer."""
    try:
        md = _admin(settings).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ObserverError(f"Kafka did not answer a metadata request: {exc}") from exc
    return set(md.topics)


def ensure_topics(
    settings: Mapping[str, Any], names: Iterable[str], partitions: int = -1, timeout_s: float = 10.0
) -> list[str]:
    """Create the topics that do not exist yet (broker defaults unless `partitions` > 0).
    Returns the names created. Raises ConfigError when not allowed to create a missing one."""
    wanted = sorted(set(names))
    have = existing_topics(settings, timeout_s)
    missing = [n for n in wanted if n not in have]
    if not missing:
        return []
    admin = _admin(settings)
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=-1) for n in missing],
        request_timeout=timeout_s,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if code in _DENIED:
                raise ConfigError(
                    f"topic '{name}' does not exist and this observer is not allowed to create it "
                    f"({err.str() if isinstance(err, KafkaError) else exc}): create it, or grant CREATE on it"
                ) from exc
            raise ObserverError(f"cannot create topic '{name}': {exc}") from exc
    if created:
        log.info("created topics %s", ", ".join(sorted(created)))
    return sorted(created)


def ensure_keyed_topic(
    settings: Mapping[str, Any],
    name: str,
    partitions: int,
    retention_ms: int,
    *,
    create: bool = True,
    timeout_s: float = 10.0,
) -> bool:
    """The keyed topic exists with exactly `partitions` partitions (one per shard); created if
    missing (when allowed). Returns True if it was created. Raises ConfigError when it has
    another partition count: shards cannot change under existing state."""
    admin = _admin(settings)
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ObserverError(f"Kafka did not answer a metadata request: {exc}") from exc
    topic = md.topics.get(name)
    if topic is not None and topic.error is None:
        have = len(topic.partitions)
        if have != partitions:
            raise ConfigError(
                f"keyed topic '{name}' has {have} partitions but the observer runs {partitions} "
                f"shards: set OBSERVER_SHARDS={have}, or use another OBSERVER_KEYED_TOPIC and key prefix"
            )
        return False
    if not create:
        raise ConfigError(
            f"keyed topic '{name}' does not exist and topic creation is off: create it with "
            f"{partitions} partitions"
        )
    fut = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=-1,
                config={"retention.ms": str(retention_ms), "cleanup.policy": "delete"},
            )
        ],
        request_timeout=timeout_s,
    )[name]
    try:
        fut.result()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return ensure_keyed_topic(
                settings, name, partitions, retention_ms, create=False, timeout_s=timeout_s
            )
        raise ObserverError(f"cannot create the keyed topic '{name}': {exc}") from exc
    log.info("created keyed topic %s (%d partitions)", name, partitions)
    return True


def record_limits(
    settings: Mapping[str, Any], topics: Iterable[str], timeout_s: float = 10.0
) -> tuple[int | None, dict[str, int]]:
    """What the cluster accepts: a broker's `message.max.bytes` (every topic's default; None if
    it would not say) and the `max.message.bytes` of each of `topics` that exists. Raises
    ObserverError when it does not answer; a config it may not read is left out."""
    admin = _admin(settings)
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ObserverError(f"Kafka did not answer a metadata request: {exc}") from exc
    wanted = sorted({t for t in topics if t in md.topics})
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in wanted]
    if md.brokers:
        resources.append(ConfigResource(ResourceType.BROKER, str(min(md.brokers))))
    if not resources:
        return None, {}
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    broker: int | None = None
    per_topic: dict[str, int] = {}
    for resource, fut in futures.items():
        try:
            entries = fut.result(timeout=timeout_s)
        except Exception as exc:  # denied, timed out: the observer's own limit stands
            log.warning("cannot read the configuration of %s: %s", resource, exc)
            continue
        name = (
            "max.message.bytes" if resource.restype == ResourceType.TOPIC else "message.max.bytes"
        )
        entry = entries.get(name)
        value = getattr(entry, "value", None)
        if value is None or not str(value).isdigit():
            continue
        if resource.restype == ResourceType.TOPIC:
            per_topic[resource.name] = int(value)
        else:
            broker = int(value)
    return broker, per_topic
