"""Wiring: the concrete adapters behind the runtime's ports, the ops API and the start checks
(the only place that puts Kafka, Redis, HTTP and the runtime together)."""

from __future__ import annotations

import ipaddress
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from observer.config import ObserverConfig, mask_url
from observer.errors import ConfigError, StoreError
from observer.flows.registry import FlowRegistry

if TYPE_CHECKING:  # keep `validate`/`replay` free of runtime imports
    from observer.adapters.redis.flows import RedisFlowStore
    from observer.adapters.webhook import WebhookPoster
    from observer.http.server import HttpServer
    from observer.metrics import Metrics
    from observer.redis_settings import RedisSettings
    from observer.runtime.health import Health
    from observer.runtime.ports import RuntimePorts
    from observer.runtime.query import InstanceQuery
    from observer.runtime.service import Service
    from observer.runtime.webhooks import WebhookDispatcher

__all__ = ["build_service", "check_access"]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def check_access(config: ObserverConfig) -> None:
    """Log in to Redis and Kafka once before anything else runs: refused credentials or a
    failed TLS handshake raise ConfigError (one clear message, no retry loop). A service that
    does not answer yet only gets a warning: the service retries until it does."""
    from observer.adapters.kafka.access import check_kafka_access
    from observer.adapters.redis.wire import check_redis_access

    log = logging.getLogger(__name__)
    redis = config.redis()
    try:
        check_redis_access(redis)
    except StoreError as exc:
        log.warning("Redis at %s does not answer yet (%s); starting anyway", redis.where, exc)
    if not check_kafka_access(config.admin_settings()):
        log.warning("Kafka at %s does not answer yet; starting anyway", config.bootstrap_servers)


def _webhooks(
    config: ObserverConfig,
    registry: FlowRegistry,
    registry_of: Callable[[], FlowRegistry],
    env: Mapping[str, str] | None,
    clock: Any,
) -> tuple[WebhookDispatcher, WebhookPoster, Callable[[FlowRegistry], None]]:
    """The webhook workers, and the check of flows about to run (raises ConfigError when a
    webhook has a secret that is not set or names a refused destination), done here for
    `registry`. `registry_of` gives the flows running later (every deployed version)."""
    from observer.adapters.webhook import WebhookPoster
    from observer.runtime.webhooks import WebhookDispatcher, WebhookTargets

    targets = WebhookTargets(registry_of, os.environ if env is None else env)

    def check(flows: FlowRegistry) -> None:
        targets.check(flows, allow_link_local=config.webhook_allow_link_local)

    check(registry)
    poster = WebhookPoster(
        config.webhook_timeout_ms / 1000.0,
        max_response_bytes=config.webhook_max_response_bytes,
        allow_link_local=config.webhook_allow_link_local,
    )
    dispatcher = WebhookDispatcher(
        poster,
        targets=targets,
        workers=config.webhook_workers,
        max_attempts=config.webhook_max_attempts,
        base_ms=config.webhook_backoff_ms,
        cap_ms=config.webhook_backoff_max_ms,
        max_queued_bytes=config.webhook_queue_bytes,
        monotonic=clock.monotonic,
    )
    return dispatcher, poster, check


def _ops_api(
    config: ObserverConfig,
    query: InstanceQuery,
    health: Health,
    metrics: Metrics,
    flow_paths: tuple[str, ...],
    control_routes: list[Any] | None = None,
    console_routes: list[Any] | None = None,
) -> HttpServer:
    """The ops API's server: bound to OBSERVER_HTTP_HOST, guarded by OBSERVER_HTTP_TOKEN
    (`control_routes`, endpoints that change anything, only exist with the token)."""
    from observer.http.app import create_app, flow_file_labels
    from observer.http.server import HttpServer

    token = None if config.http_token is None else config.http_token.get_secret_value()
    app = create_app(
        query,
        health.report,
        metrics.registry,
        token=token,
        file_label=flow_file_labels(flow_paths),
        control_routes=control_routes or (),
        console_routes=console_routes or (),
    )
    if token is None and not _loopback(config.http_host):
        logging.getLogger(__name__).warning(
            "the ops API listens on %s without a token: anyone who reaches it reads flows and "
            "instances (set OBSERVER_HTTP_TOKEN)",
            config.http_host,
        )
    return HttpServer(app, config.http_host, config.http_port)


def build_service(
    config: ObserverConfig,
    registry: FlowRegistry,
    flow_paths: tuple[str, ...] = (),
    *,
    metrics_registry: Any = None,
    env: Mapping[str, str] | None = None,
) -> Service:
    """Wire the concrete adapters into a runnable `Service` (the only place that does).
    `env` (default: the process environment) holds the webhooks' `${NAME}` secrets; a missing
    one is a ConfigError here, before anything runs."""
    from prometheus_client import CollectorRegistry

    from observer.adapters.clock import SystemClock
    from observer.adapters.redis.query import RedisSlotReader
    from observer.metrics import Metrics
    from observer.runtime.health import Health
    from observer.runtime.loop import Runtime
    from observer.runtime.query import InstanceQuery
    from observer.runtime.service import Service

    redis = config.redis()  # one parse: the hot path and redis-py connect alike
    _cluster_check(redis, config.actions)(registry)  # before anything runs
    clock = SystemClock()
    metrics = Metrics(metrics_registry if metrics_registry is not None else CollectorRegistry())
    metrics.declare_slo_flows({f.name for f in registry if f.slo is not None})
    health = Health(
        clock.monotonic,
        stall_after_ms=config.stall_after_ms,
        max_overdue_ms=config.max_overdue_ms,
        max_lag_records=config.max_lag_records,
    )
    running = _Running(registry)  # the flows running now: deployments replace them
    webhooks, poster, webhook_check = _webhooks(config, registry, running.get, env, clock)
    schemas = _schema_registry(config, registry, clock.monotonic)
    flows = [
        {"flow": f.name, "version": f.version, "file": str(Path(f.file).resolve())}
        for f in registry
    ]
    deployed = {"paths": [str(Path(p).resolve()) for p in flow_paths], "flows": flows}
    ports, closers_of_ports = _runtime_ports(config, redis, webhooks, clock)
    ports, flow_store = _flow_versions(config, redis, ports, flow_paths, registry)
    ports = replace(ports, decoder=schemas.decoder, wire=schemas.wire)  # issue 16
    runtime = Runtime(
        config,
        registry,
        ports,
        metrics=metrics,
        health=health,
        deployed=deployed,
        check=_all_of(webhook_check, schemas.check, _cluster_check(redis, config.actions)),
        process=f"{config.client_id}:{os.getpid()}",
    )
    reader = RedisSlotReader(
        redis, config.key_prefix, shards=config.shards, buckets=config.state_buckets
    )
    query = InstanceQuery(registry, reader, config.topics())
    runtime.deploy_listeners += [running.set, query.deploy, _slo_flows(metrics)]
    held_routes, close_held, held = _held_actions(config, redis, clock)
    console, close_console = _console(config, redis, query, held, clock)
    http = _ops_api(config, query, health, metrics, flow_paths, held_routes, console)
    logging.getLogger(__name__).debug("configuration: %s", config.describe())
    ignored = config.overridden_forced()
    if ignored:
        logging.getLogger(__name__).warning(
            "ignoring OBSERVER_KAFKA_ settings the observer relies on: %s", ", ".join(ignored)
        )
    banner = _banner(config, registry, runtime.ingest.topic_names(), http.port)
    closers = [poster.close, reader.close, flow_store.close, close_held, close_console]
    closers += [*closers_of_ports, schemas.close]
    prepare = _topic_preparation(config, schemas.resolve)
    limits = _record_limits(config, registry, runtime)

    def prepare_and_limits() -> None:
        prepare()
        limits()

    return Service(runtime, http, prepare=prepare_and_limits, banner=banner, closers=closers)


def _cluster_check(redis: RedisSettings, actions: str) -> Callable[[FlowRegistry], None]:
    """On a Redis Cluster, flows with guardrails and `OBSERVER_ACTIONS=hold` are refused before
    they run: held actions and incidents span flows and shards, which one script on a cluster
    cannot change atomically. Checked at start and for every deployment."""

    def check(flows: FlowRegistry) -> None:
        if not redis.cluster:
            return
        guarded = sorted({f.name for f in flows if f.guardrails.active})
        if guarded or actions == "hold":
            what = f"flow {', '.join(guarded)}: guardrails" if guarded else "OBSERVER_ACTIONS=hold"
            raise ConfigError(
                f"{what} need a single Redis, not a Redis Cluster: held actions and incidents "
                "span flows and shards (docs/running.md, Redis Cluster)"
            )

    return check


def _all_of(*checks: Callable[[FlowRegistry], None]) -> Callable[[FlowRegistry], None]:
    """One check of flows about to run made of several (each may raise ConfigError)."""

    def check(flows: FlowRegistry) -> None:
        for one in checks:
            one(flows)

    return check


def _schema_registry(config: ObserverConfig, registry: FlowRegistry, monotonic: Any) -> Any:
    """The Schema Registry's parts (`adapters/schema_registry/setup.py`); a ConfigError
    when a flow needs a registry and none is configured."""
    from observer.adapters.schema_registry import registry_parts

    return registry_parts(
        config.schema_registry_settings(),
        list(registry),
        negative_ttl_s=config.schema_registry_negative_ttl_ms / 1000.0,
        max_ids=config.schema_registry_max_ids,
        monotonic=monotonic,
    )


def _held_actions(
    config: ObserverConfig, redis: RedisSettings, clock: Any
) -> tuple[list[Any], Callable[[], None], Any]:
    """Guardrails (contract §7): the ops API's endpoints for held actions (mounted only with
    a token), what closes their Redis connections, and the port (the console reads it)."""
    from observer.adapters.redis.held import RedisHeldActions
    from observer.http.actions import action_routes

    port = RedisHeldActions(redis, config.key_prefix, history_cap=config.history_cap)
    return action_routes(port, clock.now_ms), port.close, port


def _console(
    config: ObserverConfig, redis: RedisSettings, query: Any, held: Any, clock: Any
) -> tuple[list[Any], Callable[[], None]]:
    """The web console (issue 17, docs/console.md): its routes and what closes its Redis
    connections and its reader of the alerts topic."""
    from observer.adapters.kafka.alerts_feed import KafkaAlertFeed
    from observer.adapters.redis.console import RedisConsoleStore
    from observer.console.service import ConsoleData
    from observer.http.console import console_routes

    store = RedisConsoleStore(redis, config.key_prefix, config.shards, config.state_buckets)
    feed = KafkaAlertFeed(config.consumer_settings(), config.alerts_topic)
    data = ConsoleData(
        query,
        store,
        clock.now_ms,
        held=held,
        alerts=feed,
        controls=config.http_token is not None,
        refresh_ms=config.console_refresh_ms,
        count_limit=config.console_count_limit,
    )

    def close() -> None:
        feed.close()
        store.close()

    return console_routes(data), close


def _runtime_ports(
    config: ObserverConfig, redis: RedisSettings, webhooks: Any, clock: Any
) -> tuple[RuntimePorts, list[Callable[[], None]]]:
    """Kafka and Redis behind the runtime's ports (the keyed topic in memory with `routing:
    direct`, and the lease that keeps it to one process); and what to close at the end."""
    from observer.adapters.kafka.consumer import KafkaEventSource
    from observer.adapters.kafka.producer import KafkaRecordSink
    from observer.adapters.redis.keys import Keys
    from observer.adapters.redis.lease import RedisLease
    from observer.adapters.redis.store import RedisStateStore
    from observer.adapters.redis.tally import RedisTally
    from observer.runtime.local import LocalKeyedTopic
    from observer.runtime.ports import EventSource, RawSink, RuntimePorts

    keys = Keys(config.key_prefix, config.shards, config.state_buckets)
    router_source = KafkaEventSource(config.consumer_settings())
    router_sink = KafkaRecordSink(config.router_producer_settings())
    lease: RedisLease | None = None
    backlog: Callable[[], int] | None = None
    closers: list[Callable[[], None]] = []
    if config.routing == "direct":
        local = LocalKeyedTopic(
            config.keyed_topic_name(), config.shards, sink=router_sink, source=router_source
        )
        source: EventSource = local.source
        raw_sink: RawSink = local.sink
        backlog = local.unread
        owner = f"{config.client_id}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        lease = RedisLease(redis, keys.lease(), owner, config.lease_ttl_ms)
        closers.append(lease.close)
    else:
        source = KafkaEventSource(config.keyed_consumer_settings(), values_only=True)
        raw_sink = router_sink
    ports = RuntimePorts(
        source=source,
        sink=KafkaRecordSink(config.producer_settings()),
        router_source=router_source,
        router_sink=raw_sink,
        store=RedisStateStore(redis, keys, history_cap=config.history_cap),
        webhooks=webhooks,
        clock=clock,
        lease=lease,
        backlog=backlog,
        tally=RedisTally(redis, config.key_prefix),  # correlation health, per minute
    )
    if ports.tally is not None:
        closers.append(ports.tally.close)
    return ports, closers


class _Running:
    """The flows running now, read by other threads (a reference swapped whole)."""

    def __init__(self, registry: FlowRegistry) -> None:
        self.registry = registry

    def get(self) -> FlowRegistry:
        return self.registry

    def set(self, registry: FlowRegistry) -> None:
        self.registry = registry


def _slo_flows(metrics: Metrics) -> Callable[[FlowRegistry], None]:
    def declare(registry: FlowRegistry) -> None:
        metrics.declare_slo_flows({f.name for f in registry if f.slo is not None})

    return declare


def _flow_versions(
    config: ObserverConfig,
    redis: RedisSettings,
    ports: RuntimePorts,
    flow_paths: tuple[str, ...],
    ports_registry: FlowRegistry,
) -> tuple[RuntimePorts, RedisFlowStore]:
    """Issue 15: the versions deployed to the group, kept in Redis with its state, and the
    flow files to watch (those the flows were read from, when not named)."""
    import dataclasses

    from observer.adapters.redis.flows import RedisFlowStore
    from observer.adapters.redis.keys import Keys
    from observer.flows.watch import WatchedFlowFiles

    keys = Keys(config.key_prefix, config.shards, config.state_buckets)
    store = RedisFlowStore(redis, keys)
    paths = flow_paths or tuple(sorted({f.file for f in ports_registry}))
    files = WatchedFlowFiles(paths) if paths else None
    return dataclasses.replace(ports, flows=store, flow_files=files), store


def _topic_preparation(
    config: ObserverConfig, resolve_subjects: Callable[[], None] | None = None
) -> Callable[[], None]:
    """What `Service` runs (and retries) before the loop: the registry subjects of actions
    (their wire-format headers), the topics the observer writes."""
    from observer.adapters.kafka.admin import ensure_keyed_topic, ensure_topics

    topics = config.topics()
    admin = config.admin_settings()

    def prepare() -> None:
        if resolve_subjects is not None:
            resolve_subjects()
        if config.create_topics:
            ensure_topics(admin, [topics.alerts, topics.outcomes, topics.dlq])
        if config.routing == "direct":
            return  # the keyed topic is kept in memory
        ensure_keyed_topic(
            admin,
            config.keyed_topic_name(),
            config.shards,
            config.keyed_retention_ms,
            create=config.create_topics,
        )

    return prepare


def _record_limits(
    config: ObserverConfig, registry: FlowRegistry, runtime: Any
) -> Callable[[], None]:
    """What `Service` runs after the topics are ready (hostile input, issue 12): asks the broker
    how large a record it accepts (its `message.max.bytes`, and `max.message.bytes` of the
    observer's topics and of the actions' fixed topics) and hands the limits to the runtime.
    A cluster that will not say leaves OBSERVER_MAX_RECORD_BYTES as every topic's limit."""
    from observer.adapters.kafka.admin import record_limits
    from observer.errors import ObserverError
    from observer.record_size import RecordLimits

    log = logging.getLogger(__name__)
    topics = config.topics()
    names = {topics.alerts, topics.outcomes, topics.dlq, *_fixed_action_topics(registry)}
    if config.routing == "keyed":
        names.add(config.keyed_topic_name())

    def read() -> None:
        ceiling = config.record_limit()
        try:
            broker, per_topic = record_limits(config.admin_settings(), names)
        except ObserverError as exc:
            log.warning("record size limits not read (%s): %d bytes for every topic", exc, ceiling)
            return
        default = ceiling if broker is None else min(ceiling, broker)
        limits = RecordLimits(default, tuple(sorted(per_topic.items())))
        runtime.use_record_limits(limits)
        lower = {t: limits.of(t) for t in sorted(per_topic) if limits.of(t) < default}
        log.info(
            "records up to %d bytes (%s)",
            default,
            ", ".join(f"{t}: {n}" for t, n in lower.items()) or "every topic",
        )

    return read


def _fixed_action_topics(registry: FlowRegistry) -> set[str]:
    """The topics of `publish:` actions whose topic is no template (those can be asked for)."""
    out = set()
    for flow in registry:
        for action in (a for h in _handlers(flow) for a in h.actions if a.kind == "publish"):
            template = getattr(action.topic, "__self__", None)
            source = getattr(template, "source", None)
            if isinstance(source, str) and "{" not in source:
                out.add(source)
    return out


def _handlers(flow: Any) -> list[Any]:
    handlers = [h for s in flow.steps for h in (s.if_missing, s.if_late, s.if_warning) if h]
    handlers += [s.if_out_of_order for s in flow.steps if s.if_out_of_order is not None]
    handlers += [e.handler for e in flow.errors]
    if flow.sla is not None:
        handlers += [flow.sla.if_breached, flow.sla.if_warning]
    return handlers


def _banner(
    config: ObserverConfig,
    registry: FlowRegistry,
    reading: list[str],
    http_port: int,
) -> str:
    """The start-up line: what it reads, where it publishes, where its state is."""
    topics = config.topics()
    return (
        f"observer run: flows {', '.join(f'{f.name} v{f.version}' for f in registry)}; "
        f"kafka {config.bootstrap_servers} group {config.group_id}, reading {', '.join(reading)}; "
        f"publishing alerts to {topics.alerts}, outcomes to {topics.outcomes}, dead letters to {topics.dlq}; "
        f"redis {mask_url(config.redis_url.get_secret_value())} prefix {config.key_prefix} ({config.shards} shards, "
        + (
            "direct routing: one process, keyed topic in memory); "
            if config.routing == "direct"
            else f"keyed topic {config.keyed_topic_name()}); "
        )
        + f"http on {config.http_host}:{http_port}"
        + (" (bearer token required)" if config.http_token is not None else "")
    )
