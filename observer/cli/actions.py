"""`observer actions list|release|drop|pause|resume`: held actions and the kill switch
(contract §7; docs/running.md, "Held actions and incidents"). Talks to Redis only (the group's state): a release is
published by the flow's decider in the running group, with the record's own observer-id."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import click

from observer.cli.commands import fail, main
from observer.config import ObserverConfig
from observer.errors import ConfigError, StoreError

__all__ = ["actions"]

_redis_option = click.option(
    "--redis-url", default=None, help="Redis URL [OBSERVER_REDIS_URL; redis://localhost:6379/0]."
)
_prefix_option = click.option(
    "--key-prefix", default=None, help="Prefix of every Redis key [OBSERVER_KEY_PREFIX; observer]."
)


def _select(fn: Callable[..., None]) -> Callable[..., None]:
    """The options choosing held actions of FLOW (none: every held action of the flow)."""
    fn = click.option("--incident", default=None, help="Only those an incident holds (its id).")(fn)
    fn = click.option("--key", default=None, help="Only those of one instance (its key).")(fn)
    fn = click.option(
        "--id", "ids", multiple=True, metavar="OBSERVER_ID", help="Only these (repeatable)."
    )(fn)
    return click.argument("flow")(_prefix_option(_redis_option(fn)))


def _port(redis_url: str | None, key_prefix: str | None) -> Any:
    from observer.adapters.redis.held import RedisHeldActions

    try:
        config = ObserverConfig.load({"redis_url": redis_url, "key_prefix": key_prefix}, os.environ)
    except ConfigError as exc:
        fail(str(exc))
        raise AssertionError from exc  # fail exits
    return RedisHeldActions(config.redis(), config.key_prefix, history_cap=config.history_cap)


@main.group()
def actions() -> None:
    """Held actions (incidents, the rate limit, a pause): list, release, drop; pause, resume."""


@actions.command("list")
@_select
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def list_held(
    flow: str,
    redis_url: str | None,
    key_prefix: str | None,
    incident: str | None,
    key: str | None,
    ids: tuple[str, ...],
    as_json: bool,
) -> None:
    """List the held actions of FLOW, its open incidents and whether it is paused."""
    import orjson

    from observer.runtime.held_ops import Selection, describe_guard, held_actions, ids_of, view

    port = _port(redis_url, key_prefix)
    try:
        guard = describe_guard(port, flow)
        held = held_actions(port, Selection(flow, incident, key, ids_of(ids)))
    except StoreError as exc:
        fail(str(exc))
        return
    finally:
        port.close()
    if as_json:
        for h in held:
            click.echo(orjson.dumps(view(h)).decode())
        return
    click.echo(_summary(guard))
    for h in held:
        why = h.reason + (f" {h.incident}" if h.incident else "")
        click.echo(
            f"  {h.observer_id}  {h.key}  {h.action}  ({h.kind}"
            + (f" {h.step}" if h.step else "")
            + f"; held: {why})"
        )


def _summary(guard: dict[str, Any]) -> str:
    lines = [f"{guard['flow']}: " + ("PAUSED" if guard["paused"] else "actions published")]
    if guard["paused"]:
        lines[0] += f" ({guard['paused_reason']})"
    for inc in guard["incidents"]:
        lines.append(
            f"  incident {inc['id']} open: {inc['count']} '{inc['deviation']}'"
            + (f" at {inc['step']}" if inc["step"] else "")
            + f" since {inc['opened_at']}"
        )
    total = sum(guard["held"].values())
    parts = ", ".join(f"{a} {n}" for a, n in sorted(guard["held"].items()))
    lines.append(f"  held: {total}" + (f" ({parts})" if parts else ""))
    return "\n".join(lines)


def _take(mode: str) -> Callable[..., None]:
    def command(
        flow: str,
        redis_url: str | None,
        key_prefix: str | None,
        incident: str | None,
        key: str | None,
        ids: tuple[str, ...],
    ) -> None:
        from observer.runtime.held_ops import Selection, ids_of, release_or_drop

        port = _port(redis_url, key_prefix)
        sel = Selection(flow, incident, key, ids_of(ids))
        try:
            selected, done = release_or_drop(port, sel, mode, int(time.time() * 1000))
        except StoreError as exc:
            fail(str(exc))
            return
        finally:
            port.close()
        what = "released (the group publishes them)" if mode == "release" else "dropped"
        click.echo(f"{flow}: {done} held action(s) {what}" + _gone(selected, done))

    return command


def _gone(selected: int, done: int) -> str:
    return f"; {selected - done} were taken meanwhile" if selected > done else ""


actions.command("release", help="Release held actions of FLOW: published with their own ids.")(
    _select(_take("release"))
)
actions.command("drop", help="Drop held actions of FLOW (recorded in their instances).")(
    _select(_take("drop"))
)


@actions.command()
@click.argument("flow", required=False)
@_prefix_option
@_redis_option
@click.option("--reason", default="paused by an operator", help="Why (shown by `list`).")
def pause(flow: str | None, redis_url: str | None, key_prefix: str | None, reason: str) -> None:
    """Hold every action of FLOW (no FLOW: of every flow) across the group until resumed."""
    port = _port(redis_url, key_prefix)
    try:
        port.pause(flow, reason)
    except (StoreError, ConfigError) as exc:
        fail(str(exc))
    finally:
        port.close()
    click.echo(f"{flow or 'every flow'}: actions held from now on")


@actions.command()
@click.argument("flow", required=False)
@_prefix_option
@_redis_option
def resume(flow: str | None, redis_url: str | None, key_prefix: str | None) -> None:
    """Lift the pause of FLOW (no FLOW: every pause). Actions held meanwhile stay held."""
    port = _port(redis_url, key_prefix)
    try:
        port.resume(flow)
    except StoreError as exc:
        fail(str(exc))
    finally:
        port.close()
    click.echo(f"{flow or 'every flow'}: actions published again")
