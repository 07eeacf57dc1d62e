"""`observer backtest FLOWS --since 24h`: what would these flows have done over that period?

Reads the flows' source topics from Kafka for the period (`HistoryReader`: offsets by
timestamp on every partition, records merged in time order, bounded memory; a progress bar on a
terminal), runs them through the replay engine on a virtual clock (`observer/backtest.py`),
publishes nothing, and reports instances, outcomes, deviations by kind and step, step latency
percentiles and, with `--against-live`, the alerts the live observer published in the period
that these flows would not raise, and the reverse, by key. Tables and the progress bar are drawn
with `rich` (plain text when not on a terminal); `--format json` for machines.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click
import orjson

from observer.cli.commands import fail, main
from observer.config import ObserverConfig
from observer.errors import ConfigError, FlowError, ObserverError
from observer.timefmt import format_duration, format_time, parse_duration, parse_time

if TYPE_CHECKING:
    from rich.console import Console

    from observer.backtest import AlertKey, Backtest, Comparison, Period
    from observer.flows.registry import FlowRegistry
    from observer.ingest import SourceRecord

__all__ = ["backtest", "console", "period_options", "read_period", "resolve_period"]

_SHOWN_KEYS = 20  # keys listed per difference in text (json lists them all)


def _moment(text: str, now: int, option: str) -> int:
    """A time (ISO-8601, epoch ms) or a duration before now (`24h`)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is neither a duration (24h, 7d) nor a time (ISO-8601, epoch ms)",
            param_hint=option,
        ) from None


def resolve_period(
    registry: FlowRegistry, since: str, until: str | None, warmup: str | None
) -> Period:
    """The period of `--since`, `--until` (default: now) and `--warmup` (default: long enough
    for an instance started before the period to be judged in it)."""
    from observer.backtest import Period, warmup_ms

    now = time.time_ns() // 1_000_000_000 * 1000  # whole seconds: readable times
    start_ms = _moment(since, now, "--since")
    end_ms = now if until is None else _moment(until, now, "--until")
    if end_ms <= start_ms:
        raise click.BadParameter("the period ends before it starts", param_hint="--until")
    if warmup is None:
        before = warmup_ms(registry.newest_flows())
    elif warmup.strip() in ("0", "0s"):
        before = 0
    else:
        try:
            before = parse_duration(warmup)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--warmup") from None
    return Period(start_ms, end_ms, start_ms - before)


def period_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options `backtest` and `suggest` share."""
    for option in reversed(
        [
            click.argument("flows", nargs=-1, required=True),
            click.option(
                "--since", required=True, help="Start: a duration before now (24h) or a time."
            ),
            click.option("--until", default=None, help="End (default: now): a duration or time."),
            click.option(
                "--warmup",
                default=None,
                help="Read this long before the period to rebuild the instances open when it "
                "starts (default: the flows' windows added up, or their SLA; 0: none).",
            ),
            click.option(
                "--bootstrap-servers",
                default=None,
                help="Kafka bootstrap servers [OBSERVER_BOOTSTRAP_SERVERS; localhost:9092].",
            ),
        ]
    ):
        f = option(f)
    return f


def console(stderr: bool = False) -> Console:
    """Where reports go: tables sized to the terminal, or 120 columns into a file or a pipe
    (a report read in a CI log should not wrap at 80)."""
    from rich.console import Console

    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, highlight=False, width=None if tty else 120)


def read_period(
    config: ObserverConfig, registry: FlowRegistry, period: Period, what: str
) -> Iterator[SourceRecord]:
    """The records of the flows' source topics in the period (from its warm-up on), with a
    progress bar on a terminal and a summary line on standard error."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from observer.adapters.kafka.history import HistoryReader

    reader = HistoryReader(config.consumer_settings())
    try:
        plan = reader.plan(registry.topics(), period.start, period.until)
        err = console(stderr=True)
        for topic in plan.missing:
            err.print(f"note: topic {topic} does not exist (nothing to read from it)")
        started = time.monotonic()
        if sys.stderr.isatty():
            with Progress(
                TextColumn(what),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task(what, total=plan.records)
                yield from reader.read(plan, lambda n: bar.advance(task, n))
        else:
            yield from reader.read(plan)
        partitions = len(plan.ranges)
        err.print(
            f"{what}: read {plan.records:,} records from {partitions} partitions of "
            f"{', '.join(sorted({t for t, _ in plan.ranges})) or 'no topic'} in "
            f"{time.monotonic() - started:.1f}s",
            highlight=False,
        )
    finally:
        reader.close()


def _live_alerts(config: ObserverConfig, period: Period) -> Iterator[dict[str, Any]]:
    """Alert records on the alerts topic since the period started, to the end (those of its
    last deadlines are published after it)."""
    from observer.adapters.kafka.history import HistoryReader

    reader = HistoryReader(config.consumer_settings())
    try:
        plan = reader.plan([config.alerts_topic], period.since, None)
        for rec in reader.read(plan):
            try:
                value = orjson.loads(rec.value or b"null")
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value
    finally:
        reader.close()


def _schema_decoder(config: ObserverConfig, registry: FlowRegistry) -> Any:
    """Issue 16: values of the registry formats are read with OBSERVER_SCHEMA_REGISTRY_URL's
    registry (None without one: Avro with local schemas only)."""
    if config.schema_registry_url is None:
        return None
    import time

    from observer.adapters.schema_registry import registry_parts

    return registry_parts(
        config.schema_registry_settings(),
        list(registry),
        negative_ttl_s=config.schema_registry_negative_ttl_ms / 1000.0,
        max_ids=config.schema_registry_max_ids,
        monotonic=time.monotonic,
        register=False,
    ).decoder


@main.command()
@period_options
@click.option(
    "--against-live",
    is_flag=True,
    help="Compare with the alerts the live observer published (OBSERVER_ALERTS_TOPIC).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def backtest(
    flows: tuple[str, ...],
    since: str,
    until: str | None,
    warmup: str | None,
    bootstrap_servers: str | None,
    against_live: bool,
    fmt: str,
) -> None:
    """Run flows over a period of real history from Kafka; publish nothing; report."""
    from observer.backtest import Backtest, compare
    from observer.flows.compiler import load_registry

    try:
        registry = load_registry(flows)
        config = ObserverConfig.load({"bootstrap_servers": bootstrap_servers}, os.environ)
    except (FlowError, ConfigError) as exc:
        fail(str(exc))
        return
    period = resolve_period(registry, since, until, warmup)
    run = Backtest(registry, period, config.topics(), _schema_decoder(config, registry))
    comparison = None
    try:
        run.feed(read_period(config, registry, period, "backtest"))
        run.finish()
        if against_live:
            comparison = compare(run, _live_alerts(config, period), config.alerts_topic)
    except ObserverError as exc:
        fail(f"observer backtest: {exc}")
        return
    report = run.to_json()
    if comparison is not None:
        report["against_live"] = comparison.to_json()
    if fmt == "json":
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        return
    render(run, comparison)


def render(run: Backtest, comparison: Comparison | None) -> None:
    """The report as tables on standard output."""

    from observer.backtest import describe_ms

    out = console()
    p = run.period
    out.print(
        f"[bold]backtest[/] of {format_duration(p.until - p.since)}: "
        f"{format_time(p.since)} .. {format_time(p.until)}"
    )
    warmup = format_duration(p.since - p.start) if p.since > p.start else "none"
    out.print(f"  {run.records:,} records read from {format_time(p.start)} (warm-up {warmup})")
    for name in run.registry.names():
        flow = run.registry.newest(name)
        tally = run.tallies[name]
        versions = ", ".join(f"v{v}" for v in sorted(tally.versions)) or f"v{flow.version}"
        out.print(
            f"\n[bold]{name}[/] {versions}: {tally.instances:,} instances started in the period"
            + (f" ({tally.warmup:,} before it: run, not counted)" if tally.warmup else "")
        )
        ended = sum(tally.outcomes.values())
        outcomes = [f"{o} {n:,}" for o, n in sorted(tally.outcomes.items())]
        out.print(
            "  outcomes: " + " · ".join([*outcomes, f"open at the end {tally.instances - ended:,}"])
        )
        if tally.deviations:
            table = _table(("deviation", "step", "count"))
            for (kind, step), n in sorted(tally.deviations.items(), key=lambda kv: -kv[1]):
                table.add_row(kind, step or "-", f"{n:,}")
            out.print(table)
        else:
            out.print("  no deviation")
        table = _table(("step", "observed", "p50", "p90", "p99", "max", "within", "warn"))
        for s in tally.step_stats(flow):
            table.add_row(
                s["step"],
                f"{s['count']:,}",
                *(describe_ms(s[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
                describe_ms(s["within_ms"]),
                describe_ms(s["warn_ms"]),
            )
        out.print(table)
    published = ", ".join(f"{c} {n:,}" for c, n in sorted(run.published.items()))
    out.print(f"\nwould have published (nothing was): {published or 'nothing'}")
    if comparison is not None:
        _render_comparison(out, comparison)


def _render_comparison(out: Any, c: Comparison) -> None:

    out.print(
        f"\n[bold]against the live alerts[/] on {c.topic}: {c.live_alerts:,} in the period, "
        f"{c.same:,} raised by both"
    )
    for title, diff in (
        ("only live (these flows would not raise them)", c.live_only),
        ("only these flows (the live observer did not raise them)", c.backtest_only),
    ):
        out.print(f"  {title}: {sum(diff.values()):,}")
        if not diff:
            continue
        kinds: Counter[tuple[str, str | None]] = Counter()
        keys: dict[tuple[str, str | None], list[str]] = {}
        for (_flow, key, kind, step), n in sorted(diff.items(), key=_by_key):
            kinds[(kind, step)] += n
            keys.setdefault((kind, step), []).append(key)
        table = _table(("kind", "step", "count", "keys"))
        for (kind, step), n in kinds.most_common():
            shown = keys[(kind, step)]
            more = f" (+{len(shown) - _SHOWN_KEYS} more)" if len(shown) > _SHOWN_KEYS else ""
            table.add_row(kind, step or "-", f"{n:,}", ", ".join(shown[:_SHOWN_KEYS]) + more)
        out.print(table)


def _table(columns: tuple[str, ...]) -> Any:
    """A borderless table; text columns left, numbers and durations right."""
    from rich.table import Table

    table = Table(box=None, padding=(0, 2))
    for c in columns:
        left = c in ("step", "deviation", "kind", "keys")
        table.add_column(c, justify="left" if left else "right", no_wrap=c != "keys")
    return table


def _by_key(item: tuple[AlertKey, int]) -> str:
    return str(item[0])
