"""The commands: `observer validate | replay | run | status`. Exit codes: 0 on success, 2 on
invalid flows, input or settings (messages name the file, the line and the problem)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from typing import Any

import click

from observer import build
from observer.cli.logs import configure_logging
from observer.cli.wiring import build_service, check_access
from observer.config import ObserverConfig, topics_from_env
from observer.errors import ConfigError, FlowError, InputError, ObserverError, StoreError
from observer.flows.compiler import load_registry
from observer.flows.registry import FlowRegistry
from observer.timefmt import parse_time
from observer.topics import Topics

__all__ = ["fail", "main"]


def fail(message: str) -> None:
    """Print `message` to standard error and exit 2."""
    click.echo(message, err=True)
    sys.exit(2)


def _topics_from_env() -> Topics:
    return topics_from_env(os.environ)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    package_name="choreography-observer", message=f"%(prog)s %(version)s, {build.describe()}"
)
def main() -> None:
    """Watch a choreographed process on Kafka and step in when it goes wrong."""


@main.command()
@click.argument("flows", nargs=-1, required=True)
def validate(flows: tuple[str, ...]) -> None:
    """Check flow files (files or folders) without running them."""
    try:
        registry = load_registry(flows)
    except FlowError as exc:
        fail(str(exc))
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
@click.option(
    "--schema-registry",
    "schema_registry",
    default=None,
    help="A schema registry to read wire-format values and resolve action subjects with "
    "(looked up only, never changed). Without it, give protobuf and json_schema values as "
    "JSON objects.",
)
def replay(
    flows: str,
    events: str,
    until: str | None,
    deploys: tuple[str, ...],
    schema_registry: str | None,
) -> None:
    """Run the engine on a virtual clock over recorded events; print what would be published."""
    from observer.replay import load_all, run_replay

    try:
        until_ms = parse_time(until) if until is not None else None
    except ValueError as exc:
        fail(f"--until: {exc}")
        return
    try:
        deploy_list = [_parse_deploy(d) for d in deploys]
    except ValueError as exc:
        fail(str(exc))
        return

    def warn(note: str) -> None:
        click.echo(f"replay: warning: {note}", err=True)

    hold = os.environ.get("OBSERVER_ACTIONS") or "publish"
    if hold not in ("publish", "hold"):
        fail(f"OBSERVER_ACTIONS: '{hold}' is not publish or hold")
        return
    try:
        loaded = load_all(flows, deploy_list)
        decoder, wire = _replay_registry(schema_registry, loaded)
        lines = list(
            run_replay(
                flows,
                events,
                until_ms,
                deploy_list,
                _topics_from_env(),
                warn,
                loaded=loaded,
                decoder=decoder,
                wire=wire,
                hold_actions=hold == "hold",
            )
        )
    except (FlowError, InputError, ObserverError) as exc:
        fail(str(exc))
        return
    out = sys.stdout.buffer
    for line in lines:
        out.write(line + b"\n")
    out.flush()
    click.echo(f"replay: {len(lines)} records published", err=True)


def _replay_registry(url: str | None, loaded: Any) -> tuple[Any, dict[str, bytes] | None]:
    """The decoder and action headers of `--schema-registry` (None, None without it)."""
    if url is None:
        return None, None
    import time

    from observer.adapters.schema_registry import registry_parts

    registry, deploys = loaded
    flows = [*registry, *(f for d in deploys for f in d.registry)]
    parts = registry_parts(
        {"url": url, "timeout": 5.0, "max.retries": 0},
        flows,
        negative_ttl_s=3600.0,
        max_ids=100_000,
        monotonic=time.monotonic,
        register=False,
    )
    if parts.resolve is not None:
        parts.resolve()
    return parts.decoder, parts.wire


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
    configure_logging(log_level)
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
        check_access(config)
        service = build_service(config, registry, flows)
    except (FlowError, ConfigError) as exc:
        fail(str(exc))
        return

    def on_signal(signum: int, frame: Any) -> None:
        logging.getLogger(__name__).info("received %s", signal.Signals(signum).name)
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # issue 15: SIGHUP loads the flow files again (they are also watched for changes)
    signal.signal(signal.SIGHUP, lambda signum, frame: service.runtime.reload())
    # The hot path allocates many short-lived objects and no cycles: with the default
    # thresholds the cyclic collector costs about 10 µs per event (benchmarks/PROFILE.md).
    # What is loaded by now (flows, compiled templates, libraries) stays and is never scanned.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    logging.getLogger(__name__).info("%s", build.describe())
    try:
        service.run()
    except ConfigError as exc:
        fail(str(exc))
    except ObserverError as exc:
        click.echo(f"observer run: {exc}", err=True)
        sys.exit(1)


def _deployed_versions(config: ObserverConfig) -> FlowRegistry | None:
    """Every flow version deployed to the group (kept in Redis with its state); None if none
    is stored (state written before versions were kept: the recorded paths are used)."""
    from observer.adapters.redis.flows import RedisFlowStore
    from observer.adapters.redis.keys import Keys
    from observer.flows.stored import rebuild_all

    store = RedisFlowStore(config.redis(), Keys(config.key_prefix, 1))
    try:
        stored = store.stored()
    finally:
        store.close()
    if not stored:
        return None
    registry, problems = rebuild_all(stored.values())
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    return registry


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
    help="Flow files or folders (default: every version deployed to the group).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--via", default=None, metavar="ALIAS", help="KEY is a value of this alias of the flow."
)
def status(
    flow: str,
    key: str,
    redis_url: str | None,
    key_prefix: str | None,
    flow_paths: tuple[str, ...],
    as_json: bool,
    via: str | None,
) -> None:
    """Print what the observer knows about one instance ("where is my order?"). Exit 1 if unknown.
    With --via ALIAS, KEY is a value of that alias (a tracking number, say)."""
    import orjson

    from observer.adapters.redis.query import RedisSlotReader
    from observer.runtime.query import InstanceQuery, format_instance

    try:
        config = ObserverConfig.load({"redis_url": redis_url, "key_prefix": key_prefix}, os.environ)
    except ConfigError as exc:
        fail(str(exc))
        return
    reader = RedisSlotReader(config.redis(), config.key_prefix)
    try:
        paths = list(flow_paths)
        registry = None if paths else _deployed_versions(config)
        if registry is None and not paths:
            deployed = reader.deployed() or {}
            recorded = deployed.get("paths", [])
            paths = [str(p) for p in recorded] if isinstance(recorded, list) else []
            if not paths:
                fail(
                    f"no flows: pass --flows (nothing recorded under prefix '{config.key_prefix}')"
                )
                return
        try:
            registry = registry if registry is not None else load_registry(paths)
        except FlowError as exc:
            fail(f"cannot load the flows ({', '.join(paths)}); pass --flows:\n{exc}")
            return
        view = InstanceQuery(registry, reader, config.topics()).instance(flow, key, via=via)
    except StoreError as exc:
        fail(f"observer status: {exc}")
        return
    finally:
        reader.close()
    if view is None:
        what = f"key '{key}'" if via is None else f"{via} '{key}'"
        click.echo(f"no instance of flow '{flow}' for {what}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps(view, default=str, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_instance(view))
