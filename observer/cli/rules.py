"""`observer rules FLOWS`: Prometheus recording rules and burn-rate alerts for the flows' SLOs."""

from __future__ import annotations

from pathlib import Path

import click

from observer.cli.commands import fail, main
from observer.errors import FlowError
from observer.flows.compiler import load_registry

__all__ = ["rules"]


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
        fail(str(exc))
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
