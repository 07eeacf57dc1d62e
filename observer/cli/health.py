"""`observer health [FLOW] [--since 1h]`: can the correlation be trusted? One screen, from any
machine: the per-minute counts every `observer run` of a group keeps in Redis
(`adapters/redis/tally.py`), judged by `observer/health_report.py`. Exit 0 healthy, 1 when
something looks wrong, 2 on bad input or an unreachable Redis."""

from __future__ import annotations

import os
import sys
import time

import click

from observer.cli.commands import fail, main
from observer.config import ObserverConfig
from observer.errors import ConfigError, FlowError, StoreError
from observer.flows.compiler import load_registry
from observer.flows.registry import FlowRegistry
from observer.health_report import SourceInfo, Thresholds, assess, render_text
from observer.timefmt import format_duration, format_time, parse_duration

__all__ = ["health"]

_MAX_SINCE_MS = 24 * 3_600_000  # the counts are kept for a day


def _sources(registry: FlowRegistry) -> list[SourceInfo]:
    out = []
    for flow in registry.newest_flows():
        for src in flow.sources.values():
            via = getattr(src, "via", None)  # aliases (contract §6), once sources have it
            out.append(
                SourceInfo(
                    flow.name,
                    src.name,
                    src.topic,
                    key=src.key_text,
                    type=src.type_text,
                    time=src.time_text,
                    buffer_ms=flow.buffer_ms,
                    via=via if isinstance(via, str) else None,
                )
            )
    return out


def _flow_paths(paths: tuple[str, ...], deployed: dict[str, object] | None) -> list[str]:
    if paths:
        return list(paths)
    recorded = (deployed or {}).get("paths", [])
    return [str(p) for p in recorded] if isinstance(recorded, list) else []


@main.command()
@click.argument("flow", required=False)
@click.option("--since", default="1h", show_default=True, help="How far back (at most 1d).")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
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
def health(
    flow: str | None,
    since: str,
    fmt: str,
    redis_url: str | None,
    key_prefix: str | None,
    flow_paths: tuple[str, ...],
) -> None:
    """Say in words whether events find their instances (exit 1 if something looks wrong)."""
    import orjson

    from observer.adapters.redis.query import RedisSlotReader
    from observer.adapters.redis.tally import RedisTally

    try:
        since_ms = parse_duration(since)
    except ValueError as exc:
        fail(f"--since: {exc}")
        return
    if not 60_000 <= since_ms <= _MAX_SINCE_MS:
        fail(f"--since: {since} is not between 1m and 1d (the counts are kept for a day)")
    try:
        config = ObserverConfig.load({"redis_url": redis_url, "key_prefix": key_prefix}, os.environ)
    except ConfigError as exc:
        fail(str(exc))
        return
    now = int(time.time() * 1000)
    tally = RedisTally(config.redis(), config.key_prefix, timeout_s=5.0)
    reader = RedisSlotReader(config.redis(), config.key_prefix, shards=1)
    try:
        minutes = tally.read((now - since_ms) // 60_000 + 1, now // 60_000)
        paths = _flow_paths(flow_paths, reader.deployed())
    except StoreError as exc:
        fail(f"observer health: {exc}")
        return
    finally:
        tally.close()
        reader.close()
    sources: list[SourceInfo] = []
    if paths:
        try:
            sources = _sources(load_registry(paths))
        except FlowError as exc:
            click.echo(
                f"note: cannot load the flows ({exc}); sources are named, not described", err=True
            )
    if flow is not None and sources and flow not in {s.flow for s in sources}:
        fail(f"no flow '{flow}' in {', '.join(paths)}")
    counts: dict[tuple[str, str, str, str], int] = {}
    for per in minutes.values():
        for count, n in per.items():
            counts[count] = counts.get(count, 0) + n
    period = f"in the last {format_duration(since_ms)}"
    report = assess(counts, sources, period=period, flow=flow, thresholds=Thresholds())
    if fmt == "json":
        doc = report.as_json()
        doc.update(
            prefix=config.key_prefix, since=format_time(now - since_ms), until=format_time(now)
        )
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        header = (
            f"observer health {flow or '(all flows)'}, key prefix {config.key_prefix}, "
            f"{format_time(now - since_ms)} to {format_time(now)}"
        )
        click.echo(render_text(report, header), nl=False)
    sys.exit(0 if report.healthy else 1)
