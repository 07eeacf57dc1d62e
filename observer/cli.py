"""The composition root: `observer validate | replay | run | status | rules`.

Only this module wires concrete pieces together and configures logging. Exit codes: 0 on
success, 2 on invalid flows or input (messages name the file, the line and the problem).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from observer.config import ObserverConfig, mask_url, topics_from_env
from observer.engine.core import Topics
from observer.errors import ConfigError, FlowError, InputError, ObserverError, StoreError
from observer.flows.compiler import load_registry
from observer.flows.registry import FlowRegistry
from observer.timefmt import parse_time

if TYPE_CHECKING:  # keep `validate`/`replay` free of runtime imports
    from observer.runtime.service import Service

__all__ = ["build_service", "main"]


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(2)


def _topics_from_env() -> Topics:
    return topics_from_env(os.environ)


_CONTEXT = ("flow", "key", "topic", "partition", "offset", "observer_id")


class _ContextFormatter(logging.Formatter):
    """Appends the context passed with `extra=` (flow, key, topic, partition, offset, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ctx = [
            f"{name}={getattr(record, name)}"
            for name in _CONTEXT
            if getattr(record, name, None) is not None
        ]
        return f"{text} [{' '.join(ctx)}]" if ctx else text


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_service(
    config: ObserverConfig,
    registry: FlowRegistry,
    flow_paths: tuple[str, ...] = (),
    *,
    metrics_registry: Any = None,
) -> Service:
    """Wire the concrete adapters into a runnable `Service` (the only place that does)."""
    from prometheus_client import CollectorRegistry

    from observer.adapters.kafka.admin import ensure_keyed_topic, ensure_topics
    from observer.adapters.kafka.consumer import KafkaEventSource
    from observer.adapters.kafka.producer import KafkaRecordSink
    from observer.adapters.kafka.serde import ConfluentAvroDecoder, SchemaRegistryClient
    from observer.adapters.redis.keys import Keys
    from observer.adapters.redis.lease import RedisLease
    from observer.adapters.redis.query import RedisSlotReader
    from observer.adapters.redis.store import RedisStateStore
    from observer.adapters.webhook import HttpxPoster
    from observer.http.app import create_app
    from observer.http.server import HttpServer
    from observer.metrics import Metrics
    from observer.runtime.health import Health
    from observer.runtime.inspect import InstanceQuery
    from observer.runtime.local import LocalKeyedTopic
    from observer.runtime.loop import Runtime
    from observer.runtime.ports import EventSource, RawSink, SystemClock
    from observer.runtime.service import Service
    from observer.runtime.webhooks import WebhookDispatcher

    redis_url = config.redis_url.get_secret_value()
    keys = Keys(config.key_prefix, config.shards, config.state_buckets)
    metrics = Metrics(metrics_registry if metrics_registry is not None else CollectorRegistry())
    metrics.declare_slo_flows({f.name for f in registry if f.slo is not None})
    health = Health(
        config.stall_after_ms,
        max_overdue_ms=config.max_overdue_ms,
        max_lag_records=config.max_lag_records,
    )
    poster = HttpxPoster(config.webhook_timeout_ms / 1000.0)
    webhooks = WebhookDispatcher(
        poster,
        workers=config.webhook_workers,
        max_attempts=config.webhook_max_attempts,
        base_ms=config.webhook_backoff_ms,
        cap_ms=config.webhook_backoff_max_ms,
    )
    schema_registry = None
    if config.schema_registry_url is not None:
        schema_registry = SchemaRegistryClient(config.schema_registry_url.get_secret_value())
    flows = [
        {"flow": f.name, "version": f.version, "file": str(Path(f.file).resolve())}
        for f in registry
    ]
    deployed = {"paths": [str(Path(p).resolve()) for p in flow_paths], "flows": flows}
    router_source = KafkaEventSource(config.consumer_settings())
    router_sink = KafkaRecordSink(config.router_producer_settings())
    lease: RedisLease | None = None
    backlog: Callable[[], int] | None = None
    if config.routing == "direct":
        local = LocalKeyedTopic(
            config.keyed_topic_name(), config.shards, sink=router_sink, source=router_source
        )
        source: EventSource = local.source
        raw_sink: RawSink = local.sink
        backlog = local.unread
        owner = f"{config.client_id}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        lease = RedisLease(redis_url, keys.lease(), owner, config.lease_ttl_ms)
    else:
        source = KafkaEventSource(config.keyed_consumer_settings(), values_only=True)
        raw_sink = router_sink
    runtime = Runtime(
        config,
        registry,
        source=source,
        sink=KafkaRecordSink(config.producer_settings()),
        router_source=router_source,
        router_sink=raw_sink,
        store=RedisStateStore(redis_url, keys, history_cap=config.history_cap),
        webhooks=webhooks,
        metrics=metrics,
        health=health,
        clock=SystemClock(),
        deployed=deployed,
        avro=ConfluentAvroDecoder(schema_registry),
        lease=lease,
        backlog=backlog,
    )
    reader = RedisSlotReader(
        redis_url, config.key_prefix, shards=config.shards, buckets=config.state_buckets
    )
    app = create_app(
        InstanceQuery(registry, reader, config.topics()), health.report, metrics.registry
    )
    http = HttpServer(app, config.http_host, config.http_port)
    topics = config.topics()
    admin = config.admin_settings()

    def prepare() -> None:
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

    logging.getLogger(__name__).debug("configuration: %s", config.describe())
    ignored = config.overridden_forced()
    if ignored:
        logging.getLogger(__name__).warning(
            "ignoring OBSERVER_KAFKA_ settings the observer relies on: %s", ", ".join(ignored)
        )
    banner = (
        f"observer run: flows {', '.join(f'{f.name} v{f.version}' for f in registry)}; "
        f"kafka {config.bootstrap_servers} group {config.group_id}, reading {', '.join(runtime.ingest.topic_names())}; "
        f"publishing alerts to {topics.alerts}, outcomes to {topics.outcomes}, dead letters to {topics.dlq}; "
        f"redis {mask_url(redis_url)} prefix {config.key_prefix} ({config.shards} shards, "
        + (
            "direct routing: one process, keyed topic in memory); "
            if config.routing == "direct"
            else f"keyed topic {config.keyed_topic_name()}); "
        )
        + f"http on {config.http_host}:{http.port}"
    )
    closers = [poster.close, reader.close]
    if lease is not None:
        closers.append(lease.close)
    if schema_registry is not None:
        closers.append(schema_registry.close)
    return Service(runtime, http, prepare=prepare, banner=banner, closers=closers)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="choreography-observer")
def main() -> None:
    """Watch a choreographed process on Kafka and step in when it goes wrong."""


@main.command()
@click.argument("flows", nargs=-1, required=True)
def validate(flows: tuple[str, ...]) -> None:
    """Check flow files (files or folders) without running them."""
    try:
        registry = load_registry(flows)
    except FlowError as exc:
        _fail(str(exc))
        return
    for flow in registry:
        click.echo(
            f"ok: {flow.name} v{flow.version} ({flow.file}): {len(flow.steps)} steps", err=True
        )


def _parse_deploy(value: str) -> tuple[int, str]:
    ms, sep, path = value.partition(":")
    if not sep or not path:
        raise ValueError(f"--deploy '{value}' is not MS:PATH")
    try:
        return parse_time(ms), path
    except ValueError:
        raise ValueError(f"--deploy '{value}': '{ms}' is not epoch ms or ISO-8601") from None


@main.command()
@click.argument("flows")
@click.option("--events", "events", required=True, help="JSON lines of records to replay.")
@click.option(
    "--until",
    "until",
    default=None,
    help="Advance the clock to this time at the end (ISO-8601 or epoch ms).",
)
@click.option(
    "--deploy",
    "deploys",
    multiple=True,
    help="MS:PATH — deploy more flow files at virtual time MS (repeatable).",
)
def replay(flows: str, events: str, until: str | None, deploys: tuple[str, ...]) -> None:
    """Run the engine on a virtual clock over recorded events; print what would be published."""
    from observer.replay import run_replay

    try:
        until_ms = parse_time(until) if until is not None else None
    except ValueError as exc:
        _fail(f"--until: {exc}")
        return
    try:
        deploy_list = [_parse_deploy(d) for d in deploys]
    except ValueError as exc:
        _fail(str(exc))
        return
    try:
        lines = list(run_replay(flows, events, until_ms, deploy_list, _topics_from_env()))
    except (FlowError, InputError) as exc:
        _fail(str(exc))
        return
    out = sys.stdout.buffer
    for line in lines:
        out.write(line + b"\n")
    out.flush()
    click.echo(f"replay: {len(lines)} records published", err=True)


@main.command()
@click.argument("flows", nargs=-1, required=True)
@click.option(
    "--bootstrap-servers",
    default=None,
    help="Kafka bootstrap servers [OBSERVER_BOOTSTRAP_SERVERS; localhost:9092].",
)
@click.option(
    "--redis-url", default=None, help="Redis URL [OBSERVER_REDIS_URL; redis://localhost:6379/0]."
)
@click.option(
    "--group-id", default=None, help="Kafka consumer group [OBSERVER_GROUP_ID; observer]."
)
@click.option(
    "--http-port",
    type=int,
    default=None,
    help="Port of the ops API, 0 = any free port [OBSERVER_HTTP_PORT; 8000].",
)
@click.option(
    "--key-prefix", default=None, help="Prefix of every Redis key [OBSERVER_KEY_PREFIX; observer]."
)
@click.option(
    "--log-level",
    default=lambda: os.environ.get("OBSERVER_LOG_LEVEL", "INFO"),
    show_default="INFO",
    help="Log level [OBSERVER_LOG_LEVEL].",
)
def run(
    flows: tuple[str, ...],
    bootstrap_servers: str | None,
    redis_url: str | None,
    group_id: str | None,
    http_port: int | None,
    key_prefix: str | None,
    log_level: str,
) -> None:
    """Attach to Kafka and watch the flows until stopped (SIGTERM/SIGINT: finish, commit, exit 0)."""
    _configure_logging(log_level)
    flags = {
        "bootstrap_servers": bootstrap_servers,
        "redis_url": redis_url,
        "group_id": group_id,
        "http_port": http_port,
        "key_prefix": key_prefix,
    }
    try:
        config = ObserverConfig.load(flags, os.environ)
        registry = load_registry(flows)
        service = build_service(config, registry, flows)
    except (FlowError, ConfigError) as exc:
        _fail(str(exc))
        return

    def on_signal(signum: int, frame: Any) -> None:
        logging.getLogger(__name__).info("received %s", signal.Signals(signum).name)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The hot path allocates many short-lived objects and no cycles: with the default
    # thresholds the cyclic collector costs about 10 µs per event (benchmarks/PROFILE.md).
    # What is loaded by now (flows, compiled templates, libraries) stays and is never scanned.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        service.run()
    except ConfigError as exc:
        _fail(str(exc))
    except ObserverError as exc:
        click.echo(f"observer run: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.argument("flow")
@click.argument("key")
@click.option(
    "--redis-url", default=None, help="Redis URL [OBSERVER_REDIS_URL; redis://localhost:6379/0]."
)
@click.option(
    "--key-prefix", default=None, help="Prefix of every Redis key [OBSERVER_KEY_PREFIX; observer]."
)
@click.option(
    "--flows",
    "flow_paths",
    multiple=True,
    help="Flow files or folders (default: those the running observer loaded).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(
    flow: str,
    key: str,
    redis_url: str | None,
    key_prefix: str | None,
    flow_paths: tuple[str, ...],
    as_json: bool,
) -> None:
    """Print what the observer knows about one instance ("where is my order?"). Exit 1 if unknown."""
    import orjson

    from observer.adapters.redis.query import RedisSlotReader
    from observer.runtime.inspect import InstanceQuery, format_instance

    try:
        config = ObserverConfig.load({"redis_url": redis_url, "key_prefix": key_prefix}, os.environ)
    except ConfigError as exc:
        _fail(str(exc))
        return
    reader = RedisSlotReader(config.redis_url.get_secret_value(), config.key_prefix)
    try:
        paths = list(flow_paths)
        if not paths:
            deployed = reader.deployed() or {}
            recorded = deployed.get("paths", [])
            paths = [str(p) for p in recorded] if isinstance(recorded, list) else []
            if not paths:
                _fail(
                    f"no flows: pass --flows (nothing recorded under prefix '{config.key_prefix}')"
                )
                return
        try:
            registry = load_registry(paths)
        except FlowError as exc:
            _fail(f"cannot load the flows ({', '.join(paths)}); pass --flows:\n{exc}")
            return
        view = InstanceQuery(registry, reader, config.topics()).instance(flow, key)
    except StoreError as exc:
        _fail(f"observer status: {exc}")
        return
    finally:
        reader.close()
    if view is None:
        click.echo(f"no instance of flow '{flow}' for key '{key}'", err=True)
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps(view, default=str, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_instance(view))


@main.command()
@click.argument("flows", nargs=-1, required=True)
@click.option(
    "--output", "-o", default=None, help="Write the rule file here instead of standard output."
)
def rules(flows: tuple[str, ...], output: str | None) -> None:
    """Print Prometheus rules for the flows' SLOs: recording rules and burn-rate alerts."""
    from observer.slo_rules import render_rules, slo_rule_groups

    try:
        registry = load_registry(flows)
    except FlowError as exc:
        _fail(str(exc))
        return
    groups, warnings = slo_rule_groups(registry.newest_flows())
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if not groups:
        click.echo("note: no flow declares an slo: (the rule file has no groups)", err=True)
    text = render_rules(groups)
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {len(groups)} rule group(s) to {output}", err=True)


if __name__ == "__main__":
    main()
