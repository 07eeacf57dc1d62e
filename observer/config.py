"""Runtime configuration: one frozen, typed model; flags win over environment variables, which
win over defaults. Secrets are `SecretStr`; librdkafka's dotted keys appear only at the edge
(`consumer_settings`, `producer_settings`, `admin_settings`).

Environment: `OBSERVER_<FIELD>` for every field (e.g. `OBSERVER_BOOTSTRAP_SERVERS`,
`OBSERVER_ALERTS_TOPIC`), and `OBSERVER_KAFKA_<NAME>` for any librdkafka setting, `<NAME>`
lower-cased with `_` turned into `.` (`OBSERVER_KAFKA_SECURITY_PROTOCOL` -> `security.protocol`).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from observer.errors import ConfigError
from observer.masking import MASK, mask_url
from observer.record_size import DEFAULT_MAX_RECORD_BYTES, RecordLimits
from observer.redis_settings import RedisSettings, parse_redis_url
from observer.topics import Topics

__all__ = [
    "ENV_PREFIX",
    "KAFKA_ENV_PREFIX",
    "ObserverConfig",
    "is_secret_key",
    "mask_url",
    "topics_from_env",
]

ENV_PREFIX = "OBSERVER_"
KAFKA_ENV_PREFIX = "OBSERVER_KAFKA_"
# OBSERVER_KAFKA_* variables that belong to ops/stack (the local broker), not to librdkafka.
_NOT_LIBRDKAFKA = {
    "OBSERVER_KAFKA_VERSION",
    "OBSERVER_KAFKA_PORT",
    "OBSERVER_KAFKA_CONTROLLER_PORT",
    "OBSERVER_KAFKA_HEAP",
}
_SECRET = re.compile(
    r"(password|secret|token|credential|jaas|\.key$|key\.pem|\.pem$|oauthbearer\.config)", re.I
)
# Settings the observer's guarantees depend on: never taken from the environment.
_FORCED_CONSUMER = {"enable.auto.commit": False}
_FORCED_PRODUCER = {"enable.idempotence": True, "acks": "all"}
# Group membership (docs/running.md, Failover): a member that stops heartbeating is dropped
# after 6 s (the smallest session a stock broker accepts, group.min.session.timeout.ms), and
# members learn of a rebalance within a second. KIP-848's protocol (group.protocol=consumer)
# keeps both on the broker, so they are left out when it is chosen.
_CLASSIC_GROUP = {
    "partition.assignment.strategy": "cooperative-sticky",
    "session.timeout.ms": 6_000,
    "heartbeat.interval.ms": 1_000,
}
# group.instance.id: what Kafka accepts (the characters of a topic name)
_INSTANCE_ID = re.compile(r"[a-zA-Z0-9._-]{1,200}")
_DEFAULT_TOPICS = Topics()
_MIN_RECORD, _MAX_RECORD = 16_384, 100_000_000  # OBSERVER_MAX_RECORD_BYTES


def is_secret_key(name: str) -> bool:
    """Whether a librdkafka setting holds a secret (its value is never logged)."""
    return bool(_SECRET.search(name))


class ObserverConfig(BaseModel):
    """Everything `observer run` needs besides the flows. Times in ms unless named `_s`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "localhost:9092"
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    group_id: str = "observer"
    # the ops API: loopback unless told otherwise; with a token, every endpoint but /healthz
    # and /readyz wants `Authorization: Bearer <token>`
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)  # 0: pick a free port (logged)
    http_token: SecretStr | None = None
    alerts_topic: str = _DEFAULT_TOPICS.alerts
    outcomes_topic: str = _DEFAULT_TOPICS.outcomes
    dlq_topic: str = _DEFAULT_TOPICS.dlq
    key_prefix: str = "observer"
    schema_registry_url: SecretStr | None = None
    kafka: tuple[tuple[str, SecretStr], ...] = ()  # extra librdkafka settings, dotted names
    client_id: str = Field(default_factory=lambda: f"observer-{socket.gethostname()}")
    # static group membership: a process restarted with the same id gets its partitions back
    # at once, instead of after the session timeout; unique per running process (the pod name)
    instance_id: str = ""
    create_topics: bool = True
    # the loop
    batch_size: int = Field(1000, ge=1, le=100_000)
    poll_timeout_ms: int = Field(20, ge=1)
    tick_interval_ms: int = Field(20, ge=1)
    tick_limit: int = Field(2000, ge=1)
    commit_interval_ms: int = Field(200, ge=0)
    # offsets are committed only once their state write is this old: Redis with AOF `everysec`
    # may lose the last second in a crash, and then those records are read again
    commit_delay_ms: int = Field(2_000, ge=0)
    idle_grace_ms: int = Field(500, ge=0)
    shards: int = Field(16, ge=1, le=4096)  # = partitions of the keyed topic
    # Redis hashes per shard and flow that hold the slots; fixed per key prefix like `shards`
    state_buckets: int = Field(64, ge=1, le=65_536)
    # "keyed": through the keyed topic, any number of processes; "direct": one process per
    # group (a Redis lease; others wait as standbys), the keyed topic kept in memory
    routing: Literal["keyed", "direct"] = "keyed"
    lease_ttl_ms: int = Field(30_000, ge=1_000)
    keyed_topic: str = ""  # default: "<group_id>.observer-keyed"
    keyed_retention_ms: int = Field(7 * 86_400_000, ge=60_000)
    mark_interval_ms: int = Field(20, ge=1)
    # readiness: /readyz says false while deadlines are this overdue or this many records behind
    max_overdue_ms: int = Field(60_000, ge=0)  # 0: not checked
    max_lag_records: int = Field(1_000_000, ge=0)  # 0: not checked
    history_cap: int = Field(100, ge=1)
    slot_cache_size: int = Field(100_000, ge=0)  # decoded slots kept in memory (0: none)
    ttl_slack_ms: int = Field(86_400_000, ge=1)
    stall_after_ms: int = Field(30_000, ge=100)
    shutdown_timeout_ms: int = Field(10_000, ge=0)
    # publishing
    linger_ms: int = Field(5, ge=0)
    retry_backoff_ms: int = Field(500, ge=1)
    webhook_timeout_ms: int = Field(5_000, ge=1)  # all of one attempt: connect, send, answer
    webhook_max_response_bytes: int = Field(65_536, ge=0)  # more of an answer is not read
    # link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata services) are refused
    webhook_allow_link_local: bool = False
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_backoff_ms: int = Field(200, ge=1)
    webhook_backoff_max_ms: int = Field(30_000, ge=1)
    webhook_workers: int = Field(2, ge=1, le=64)
    # hostile input (issue 12): the largest record the observer publishes (bytes, a batch of one
    # record; a topic whose `max.message.bytes` the broker says is lower lowers it for that
    # topic), and the stored bytes of the slots the tracker keeps decoded in memory
    max_record_bytes: int = Field(DEFAULT_MAX_RECORD_BYTES, ge=_MIN_RECORD, le=_MAX_RECORD)
    slot_cache_bytes: int = Field(256 * 1024 * 1024, ge=0)
    webhook_queue_bytes: int = Field(64 * 1024 * 1024, ge=0)  # webhook bodies waiting or retrying
    # issue 15: versions kept with the state. How often each process looks for a new
    # deployment of the group (and for changed flow files); how often it looks for superseded
    # versions that no instance uses any more, and how long a version must have been
    # superseded before it may retire (processes that have not seen the newer one yet may
    # still start instances on it)
    deploy_poll_ms: int = Field(2_000, ge=100, le=60_000)
    retire_interval_ms: int = Field(600_000, ge=1_000)
    retire_after_ms: int = Field(600_000, ge=0)
    # Schema Registry (issue 16): the URL is `schema_registry_url` above; basic auth as
    # "user:password" (or in the URL), TLS as confluent-kafka's client takes it (file paths)
    schema_registry_basic_auth: SecretStr | None = None
    schema_registry_ca: str | None = None  # CA file or directory
    schema_registry_cert: str | None = None  # client certificate (PEM)
    schema_registry_key: str | None = None  # its private key (PEM)
    schema_registry_key_password: SecretStr | None = None
    # one lookup of a schema id waits at most this long, on the loop's thread, and is not
    # retried there: a failing id is not asked again for `negative_ttl` (its records go to
    # the dead-letter topic); one source may bring at most `max_ids` distinct schema ids
    schema_registry_timeout_ms: int = Field(2_000, ge=100, le=60_000)
    schema_registry_negative_ttl_ms: int = Field(30_000, ge=0)
    schema_registry_max_ids: int = Field(256, ge=1, le=100_000)
    # guardrails (contract §7): `hold` starts with every action of every flow held (a dry run:
    # `observer actions resume` lifts it); how often the decider of a guarded flow runs
    actions: Literal["publish", "hold"] = "publish"
    guard_interval_ms: int = Field(100, ge=1)
    guard_batch: int = Field(5_000, ge=1)  # waiting deviations decided per pass at most
    # the web console (issue 17): where a flow's instances wait is counted from their states by
    # one process of the group at most this often while someone looks (docs/console.md), over
    # at most this many slots per flow
    console_refresh_ms: int = Field(5_000, ge=500)
    console_count_limit: int = Field(100_000, ge=1)

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "{} \t\r\n"):
            raise ValueError("a non-empty prefix without braces or whitespace")
        return v

    @field_validator("instance_id")
    @classmethod
    def _instance(cls, v: str) -> str:
        v = v.strip()
        if v and not _INSTANCE_ID.fullmatch(v):
            raise ValueError("at most 200 of the characters a-z, A-Z, 0-9, '.', '_', '-'")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        try:
            parse_redis_url(v.get_secret_value())
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("http_token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return v

    @field_validator("bootstrap_servers", "group_id", "alerts_topic", "outcomes_topic", "dlq_topic")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> ObserverConfig:
        """Build from flags (None values ignored) over `OBSERVER_*` environment variables over
        defaults. Raises ConfigError naming the variable or flag at fault."""
        env = dict(env or {})
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name in cls.model_fields:
            if name == "kafka":
                continue
            var = ENV_PREFIX + name.upper()
            if var in env and env[var] != "":
                values[name] = env[var]
                origin[name] = var
        kafka: dict[str, str] = {}
        for var, value in sorted(env.items()):
            if (
                var.startswith(KAFKA_ENV_PREFIX)
                and var not in _NOT_LIBRDKAFKA
                and len(var) > len(KAFKA_ENV_PREFIX)
            ):
                kafka[var[len(KAFKA_ENV_PREFIX) :].lower().replace("_", ".")] = value
        for name, value in (flags or {}).items():
            if value is None:
                continue
            if name == "kafka":
                kafka.update(dict(value))
                continue
            values[name] = value
            origin[name] = "--" + name.replace("_", "-")
        values["kafka"] = tuple((k, SecretStr(str(v))) for k, v in sorted(kafka.items()))
        _default_instance_id(values, origin, env, kafka)
        try:
            config = cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for e in exc.errors():
                field = str(e["loc"][0]) if e["loc"] else "?"
                problems.append(f"{origin.get(field, field)}: {e['msg']}")
            raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
        if config.instance_id and config.kip848():
            raise ConfigError(
                f"invalid configuration: {origin.get('instance_id', 'instance_id')} with "
                "group.protocol=consumer: with that protocol Kafka refuses a process started "
                "again after a crash until the killed one's session expires (45 s by default), "
                "so it would exit and be restarted in a loop. Use the classic protocol (the "
                "default) with an instance id, or group.protocol=consumer without one "
                "(docs/running.md, Failover)"
            )
        return config

    # -- views ------------------------------------------------------------------------------------

    def redis(self) -> RedisSettings:
        """The Redis URL, parsed: the one source of both Redis clients' settings."""
        return parse_redis_url(self.redis_url.get_secret_value())

    def topics(self) -> Topics:
        """The observer's topics, with `max_record_bytes` (or a lower `message.max.bytes` of
        the producer, if set) as every topic's limit until the broker says more."""
        return Topics(
            alerts=self.alerts_topic,
            outcomes=self.outcomes_topic,
            dlq=self.dlq_topic,
            limits=RecordLimits(self.record_limit()),
        )

    def record_limit(self) -> int:
        """The largest record any topic gets: `max_record_bytes`, or the producer's
        `message.max.bytes` (OBSERVER_KAFKA_MESSAGE_MAX_BYTES) when that is set lower."""
        producer = dict(self.kafka).get("message.max.bytes")
        if producer is not None and producer.get_secret_value().strip().isdigit():
            return min(self.max_record_bytes, int(producer.get_secret_value()))
        return self.max_record_bytes

    def schema_registry_settings(self) -> dict[str, Any] | None:
        """The Schema Registry client's configuration (confluent-kafka's names, secrets
        revealed: for the client only); None without a registry URL."""
        if self.schema_registry_url is None:
            return None
        conf: dict[str, Any] = {
            "url": self.schema_registry_url.get_secret_value(),
            "timeout": self.schema_registry_timeout_ms / 1000.0,
            "max.retries": 0,  # never a retry loop on the loop's thread: a negative cache
        }
        if self.schema_registry_basic_auth is not None:
            conf["basic.auth.user.info"] = self.schema_registry_basic_auth.get_secret_value()
        optional = {
            "ssl.ca.location": self.schema_registry_ca,
            "ssl.certificate.location": self.schema_registry_cert,
            "ssl.key.location": self.schema_registry_key,
        }
        conf.update({k: v for k, v in optional.items() if v})
        if self.schema_registry_key_password is not None:
            conf["ssl.key.password"] = self.schema_registry_key_password.get_secret_value()
        return conf

    def kafka_extra(self) -> dict[str, str]:
        """The OBSERVER_KAFKA_* settings, secrets revealed (for the clients only)."""
        return {k: v.get_secret_value() for k, v in self.kafka}

    def _common(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
        }
        conf.update(self.kafka_extra())
        return conf

    def consumer_settings(self) -> dict[str, Any]:
        """The router's consumer: the source topics, in the group `group_id`."""
        return self._consumer("router", self.group_id)

    def _consumer(self, stage: str, group: str) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "group.id": group,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 10,
            "enable.partition.eof": False,
        }
        if stage == "tracker":
            # Marks are what fire deadlines: with librdkafka's 500 ms a mark now and then
            # waited for a fetch the broker held (alert p99 459 -> 111 ms through the broker)
            conf["fetch.wait.max.ms"] = 50
        common = self._common()
        if not self.kip848():
            conf.update(_CLASSIC_GROUP)
        if self.instance_id:
            # one id per stage: each stage's consumer is a member of its own group
            conf["group.instance.id"] = f"{self.instance_id}-{stage}"
        conf.update(common)
        conf.update(_FORCED_CONSUMER)
        return conf

    def kip848(self) -> bool:
        """Whether the consumer groups use KIP-848's protocol (OBSERVER_KAFKA_GROUP_PROTOCOL)."""
        return self.kafka_extra().get("group.protocol", "classic").lower() == "consumer"

    def keyed_topic_name(self) -> str:
        """The keyed topic of this group (valid topic characters only)."""
        if self.keyed_topic:
            return self.keyed_topic
        return re.sub(r"[^a-zA-Z0-9._-]", "_", f"{self.group_id}.observer-keyed")[:249]

    def keyed_consumer_settings(self) -> dict[str, Any]:
        """The tracker's consumer: the keyed topic, in the group `<group_id>.keyed`."""
        return self._consumer("tracker", f"{self.group_id}.keyed")

    def router_producer_settings(self) -> dict[str, Any]:
        """The router's producer: never gives a record up (a broker restart is waited out)."""
        conf = self.producer_settings()
        conf["delivery.timeout.ms"] = 2_147_483_647
        return conf

    def producer_settings(self) -> dict[str, Any]:
        # the client refuses a record over its own `message.max.bytes` (default 1,000,000):
        # the observer's own limit decides instead, unless the user set it
        conf: dict[str, Any] = {
            "linger.ms": self.linger_ms,
            "message.max.bytes": max(self.max_record_bytes, 1_000_000),
        }
        conf.update({k: v for k, v in self._common().items() if k not in _CONSUMER_ONLY})
        conf.update(_FORCED_PRODUCER)
        return conf

    def admin_settings(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self._common().items()
            if k not in _CONSUMER_ONLY and k not in _PRODUCER_ONLY
        }

    def overridden_forced(self) -> list[str]:
        """OBSERVER_KAFKA_* settings that were ignored because the observer relies on them."""
        return sorted(k for k, _ in self.kafka if k in _FORCED_CONSUMER or k in _FORCED_PRODUCER)

    def describe(self) -> dict[str, Any]:
        """The configuration with every secret masked (safe to log)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            v = getattr(self, name)
            if name == "kafka":
                out[name] = {k: (MASK if is_secret_key(k) else s.get_secret_value()) for k, s in v}
            elif name in ("redis_url", "schema_registry_url"):
                out[name] = None if v is None else mask_url(v.get_secret_value())
            elif name in (
                "http_token",
                "schema_registry_basic_auth",
                "schema_registry_key_password",
            ):
                out[name] = None if v is None else MASK
            else:
                out[name] = v
        return out


# Settings only the consumer understands (not passed to producer/admin to avoid warnings).
_CONSUMER_ONLY = {
    "group.id",
    "group.instance.id",
    "auto.offset.reset",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "fetch.queue.backoff.ms",
    "enable.partition.eof",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.wait.max.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "isolation.level",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "group.protocol",
    "group.remote.assignor",
    "max.partition.fetch.bytes",
    "check.crcs",
    "enable.auto.commit",
}
_PRODUCER_ONLY = {
    "linger.ms",
    "queue.buffering.max.ms",
    "acks",
    "enable.idempotence",
    "compression.type",
    "compression.codec",
    "batch.size",
    "batch.num.messages",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "retries",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
}


def topics_from_env(env: Mapping[str, str]) -> Topics:
    """The observer's own topics from OBSERVER_ALERTS_TOPIC / _OUTCOMES_TOPIC / _DLQ_TOPIC, and
    the record limit from OBSERVER_MAX_RECORD_BYTES (what `observer replay` measures against).
    Raises ConfigError on a limit that is no number in range."""
    d = Topics()
    limit = d.limits.default
    raw = env.get("OBSERVER_MAX_RECORD_BYTES")
    if raw:
        try:
            limit = int(raw)
        except ValueError:
            raise ConfigError("OBSERVER_MAX_RECORD_BYTES: not a whole number of bytes") from None
        if not _MIN_RECORD <= limit <= _MAX_RECORD:
            raise ConfigError(
                f"OBSERVER_MAX_RECORD_BYTES: must be {_MIN_RECORD} to {_MAX_RECORD} bytes"
            )
    return Topics(
        alerts=env.get("OBSERVER_ALERTS_TOPIC") or d.alerts,
        outcomes=env.get("OBSERVER_OUTCOMES_TOPIC") or d.outcomes,
        dlq=env.get("OBSERVER_DLQ_TOPIC") or d.dlq,
        limits=RecordLimits(limit),
    )


def _default_instance_id(
    values: dict[str, Any], origin: dict[str, str], env: Mapping[str, str], kafka: Mapping[str, str]
) -> None:
    """Static membership by default where the host name is the pod's: in Kubernetes (a
    `KUBERNETES_SERVICE_HOST` in the environment) the instance id is `HOSTNAME`, so a container
    restarted in its pod gets its partitions back at once (docs/running.md, Failover). Elsewhere
    two processes on one host would share a host name, so there is no default. `none` turns it
    off; KIP-848's protocol never gets one by default."""
    if values.get("instance_id") == "none":
        values["instance_id"] = ""
        return
    if "instance_id" in values or kafka.get("group.protocol", "classic") == "consumer":
        return
    host = env.get("HOSTNAME", "")
    if env.get("KUBERNETES_SERVICE_HOST") and host and _INSTANCE_ID.fullmatch(host):
        values["instance_id"] = host
        origin["instance_id"] = "HOSTNAME (in Kubernetes)"
