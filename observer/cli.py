"""The composition root: `observer validate | replay | run | status`.

Only this module wires concrete pieces together and configures logging. Exit codes: 0 on
success, 2 on invalid flows or input (messages name the file, the line and the problem).
"""

from __future__ import annotations

import sys

import click

from observer.engine.core import Topics
from observer.errors import FlowError, InputError
from observer.flows.compiler import load_registry
from observer.timefmt import parse_time

__all__ = ["main"]


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(2)


def _topics_from_env() -> Topics:
    import os

    d = Topics()
    return Topics(
        alerts=os.environ.get("OBSERVER_ALERTS_TOPIC", d.alerts),
        outcomes=os.environ.get("OBSERVER_OUTCOMES_TOPIC", d.outcomes),
        dlq=os.environ.get("OBSERVER_DLQ_TOPIC", d.dlq),
    )


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


if __name__ == "__main__":
    main()
