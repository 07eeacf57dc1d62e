"""`observer suggest FLOWS --since 7d`: windows learned from history.

Back-tests the flows over the period (as `observer backtest` does), proposes `within` and `warn`
for each step from the latencies observed (`observer/suggest.py` states the rule), back-tests
the proposal over the same period, and shows per step how many `missing`, `late` and `warning`
the current and the proposed windows would have raised. `--write PATH` writes the next version
of the flow file (comments kept, version bumped), ready for `observer backtest` and `observer
deploy`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from observer.cli.backtest import console, period_options, read_period, resolve_period
from observer.cli.commands import fail, main
from observer.config import ObserverConfig
from observer.errors import ConfigError, FlowError, ObserverError
from observer.timefmt import format_duration, format_time

if TYPE_CHECKING:
    from observer.backtest import Backtest, FlowTally, Period
    from observer.flows.compiled import CompiledFlow
    from observer.flows.registry import FlowRegistry
    from observer.suggest import Proposal, Rule

__all__ = ["suggest"]

_COUNTED = ("missing", "late", "warning")


@main.command()
@period_options
@click.option(
    "--percentile", "pct", type=click.FloatRange(50, 100), default=99.0, show_default=True
)
@click.option("--warn-percentile", type=click.FloatRange(1, 100), default=90.0, show_default=True)
@click.option("--margin", type=click.FloatRange(1, 100), default=1.25, show_default=True)
@click.option("--min-samples", type=click.IntRange(1), default=20, show_default=True)
@click.option("--flow", "only", default=None, help="Only this flow (FLOWS may hold several).")
@click.option("--write", "write_to", default=None, help="Write the next version of the flow here.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def suggest(
    flows: tuple[str, ...],
    since: str,
    until: str | None,
    warmup: str | None,
    bootstrap_servers: str | None,
    pct: float,
    warn_percentile: float,
    margin: float,
    min_samples: int,
    only: str | None,
    write_to: str | None,
    fmt: str,
) -> None:
    """Propose within/warn per step from the latencies of a period, and what they would raise."""
    from observer.flows.stored import load_deployable
    from observer.suggest import Rule

    try:
        registry, stored = load_deployable(flows)
        config = ObserverConfig.load({"bootstrap_servers": bootstrap_servers}, os.environ)
    except (FlowError, ConfigError) as exc:
        fail(str(exc))
        return
    names = [n for n in registry.names() if only is None or n == only]
    if not names:
        fail(f"no flow '{only}' in {', '.join(flows)}")
        return
    if write_to is not None and len(names) != 1:
        fail(f"--write needs one flow: pass --flow NAME (FLOWS hold {', '.join(names)})")
        return
    rule = Rule(pct, warn_percentile, margin, min_samples)
    period = resolve_period(registry, since, until, warmup)
    texts = {(s.flow, s.version): s.text for s in stored}
    try:
        now = _run(config, registry, period, "current windows")
        plans = _plans(registry, names, now, rule, texts)
        proposed = registry.copy()
        for _flow, _props, new_flow, _text in plans:
            proposed.add(new_flow)
        then = _run(config, proposed, period, "proposed windows")
    except (ObserverError, FlowError) as exc:
        fail(f"observer suggest: {exc}")
        return
    report = [_json(now.tallies[f.name], then.tallies[f.name], f, p, nf) for f, p, nf, _ in plans]
    if fmt == "json":
        doc = {"period": period.to_json(), "rule": rule.describe(), "flows": report}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _render(period, rule, report)
    if write_to is not None:
        _flow, props, new_flow, text = plans[0]
        if not any(p.changes for p in props):
            click.echo("the windows fit the period: nothing to write", err=True)
            return
        Path(write_to).write_text(text, encoding="utf-8")
        click.echo(
            f"wrote {new_flow.name} v{new_flow.version} to {write_to}; try it with observer "
            f"backtest {write_to} --since {since}, then observer deploy {write_to}",
            err=True,
        )


def _run(config: ObserverConfig, registry: FlowRegistry, period: Period, what: str) -> Backtest:
    from observer.backtest import Backtest

    run = Backtest(registry, period, config.topics())
    run.feed(read_period(config, registry, period, what))
    run.finish()
    return run


def _plans(
    registry: FlowRegistry,
    names: list[str],
    run: Backtest,
    rule: Rule,
    texts: dict[tuple[str, int], str],
) -> list[tuple[CompiledFlow, list[Proposal], CompiledFlow, str]]:
    """Per flow: its newest version, the proposals, the next version compiled, its file text."""
    from observer.flows.compiler import compile_flow
    from observer.flows.loader import load_flow_text
    from observer.suggest import next_version_text, propose

    out = []
    for name in names:
        flow = registry.newest(name)
        props = propose(flow, run.tallies[name].latencies, rule)
        version = flow.version + 1
        text = next_version_text(texts[(name, flow.version)], flow, props, version)
        loaded, problems = load_flow_text(text, flow.file)
        doc = next(
            (lf for lf in loaded if (lf.spec.flow, lf.spec.version) == (name, version)), None
        )
        compiled, more = compile_flow(doc) if doc is not None else (None, [])
        if compiled is None:
            raise FlowError(problems + more)
        out.append((flow, props, compiled, text))
    return out


def _json(
    now: FlowTally, then: FlowTally, flow: CompiledFlow, props: list[Proposal], new: CompiledFlow
) -> dict[str, Any]:
    steps = []
    for p in props:
        steps.append(
            {
                "step": p.step,
                "observed": p.samples,
                **{k: getattr(p, k) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
                "within_ms": {"now": p.within_ms, "proposed": p.new_within_ms or p.within_ms},
                "warn_ms": {"now": p.warn_ms, "proposed": p.new_warn_ms or p.warn_ms},
                **{
                    kind: {
                        "now": now.deviations[(kind, p.step)],
                        "proposed": then.deviations[(kind, p.step)],
                    }
                    for kind in _COUNTED
                },
            }
        )
    return {
        "flow": flow.name,
        "version": flow.version,
        "file": flow.file,
        "next_version": new.version,
        "changes": any(p.changes for p in props),
        "instances": now.instances,
        "steps": steps,
    }


def _render(period: Period, rule: Rule, report: list[dict[str, Any]]) -> None:
    from rich.table import Table

    out = console()
    out.print(
        f"[bold]suggest[/] from {format_duration(period.until - period.since)} of history: "
        f"{format_time(period.since)} .. {format_time(period.until)}"
    )
    out.print(f"  rule: {rule.describe()}")
    for flow in report:
        out.print(
            f"\n[bold]{flow['flow']}[/] v{flow['version']} ({flow['file']}): "
            f"{flow['instances']:,} instances started in the period"
        )
        seen = Table(
            box=None, padding=(0, 2), title="latency from the anchor", title_justify="left"
        )
        windows = Table(box=None, padding=(0, 2), title="now → proposed", title_justify="left")
        for table, columns in (
            (seen, ("step", "observed", "p50", "p90", "p99", "max")),
            (windows, ("step", "within", "warn", *_COUNTED)),
        ):
            for c in columns:
                table.add_column(c, justify="left" if c == "step" else "right", no_wrap=True)
        for s in flow["steps"]:
            seen.add_row(
                s["step"],
                f"{s['observed']:,}",
                *(_ms(s[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
            )
            windows.add_row(
                s["step"],
                _change(s["within_ms"], _ms),
                _change(s["warn_ms"], _ms),
                *(_change(s[kind], lambda n: f"{n:,}") for kind in _COUNTED),
            )
        out.print(seen)
        out.print(windows)
        if flow["changes"]:
            out.print(f"  next version: v{flow['next_version']} (write it with --write PATH)")
        else:
            out.print("  the windows fit the period: nothing to change")


def _ms(ms: int | None) -> str:
    return "-" if ms is None else format_duration(ms)


def _change(pair: dict[str, Any], fmt: Any) -> str:
    now, proposed = pair["now"], pair["proposed"]
    if now == proposed:
        return fmt(now) if now is not None else "-"
    return f"{fmt(now) if now is not None else '-'} → [bold]{fmt(proposed)}[/]"
