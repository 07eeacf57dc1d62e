"""`observer deploy FLOWS`: validate flows and deploy them to a running group (issue 15).

What CI/CD runs to push a flow: the versions are written to Redis with the group's state, and
every `observer run` process of the group picks them up within `OBSERVER_DEPLOY_POLL_MS`
(2 s), no restart. A version already deployed with another definition is refused (a changed
flow needs a new version), and so is a webhook to a refused destination or, unless
`--no-secret-check`, one whose `${NAME}` secrets are not set here. `--wait` waits until every
running process runs the deployment. Superseded versions no instance uses any more retire.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import click

from observer.cli.commands import fail, main
from observer.config import ObserverConfig
from observer.errors import ConfigError, FlowError, StoreError

if TYPE_CHECKING:
    from observer.adapters.redis.flows import RedisFlowStore

__all__ = ["deploy"]

_STALE_MS = 30_000  # a process that has not said what it runs for this long is not running
_GONE_MS = 3_600_000  # ... and is forgotten after this long


class _EverySecretSet(Mapping[str, str]):
    """An environment where every variable is set: checks destinations, not secrets."""

    def __getitem__(self, name: str) -> str:
        return "set"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@main.command()
@click.argument("flows", nargs=-1, required=True)
@click.option(
    "--redis-url", default=None, help="Redis URL [OBSERVER_REDIS_URL; redis://localhost:6379/0]."
)
@click.option(
    "--key-prefix", default=None, help="Prefix of every Redis key [OBSERVER_KEY_PREFIX; observer]."
)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=0,
    show_default=True,
    help="Seconds to wait for every running process to run the deployment (0: do not wait).",
)
@click.option(
    "--no-secret-check",
    is_flag=True,
    help="Do not check that webhooks' ${NAME} secrets are set here (they live only in the "
    "observer's environment; each process checks them and logs what it lacks).",
)
def deploy(
    flows: tuple[str, ...],
    redis_url: str | None,
    key_prefix: str | None,
    wait_s: float,
    no_secret_check: bool,
) -> None:
    """Validate flows and deploy them to the running group (no restart). Exit 2 if refused."""
    from observer.adapters.redis.flows import RedisFlowStore
    from observer.flows.stored import load_deployable
    from observer.runtime.deployments import retire_unused
    from observer.runtime.webhooks import WebhookTargets

    try:
        config = ObserverConfig.load({"redis_url": redis_url, "key_prefix": key_prefix}, os.environ)
        registry, candidates = load_deployable(flows)
        env: Mapping[str, str] = _EverySecretSet() if no_secret_check else os.environ
        WebhookTargets(lambda: registry, env).check(
            registry, allow_link_local=config.webhook_allow_link_local
        )
    except (FlowError, ConfigError) as exc:
        fail(str(exc))
        return
    try:
        store = RedisFlowStore.for_prefix(config.redis(), config.key_prefix)
    except StoreError as exc:
        fail(f"observer deploy: {exc}")
        return
    try:
        plan = store.deploy(candidates)
        if plan.refused:
            fail("refused; nothing deployed:\n" + "\n".join(str(p) for p in plan.refused))
            return
        for sf in plan.added:
            click.echo(f"deployed {sf.label}", err=True)
        for sf in plan.unchanged:
            click.echo(f"already deployed: {sf.flow} v{sf.version}", err=True)
        generation = store.generation()
        _forget_gone(store)
        for use in retire_unused(store, store.stored(), config.retire_after_ms):
            sf = use.stored
            if use.retired:
                state = "retired (no instance uses it)"
            elif use.instances:
                state = f"{use.instances} open or retained instances; retires once they end"
            else:
                state = "no instance uses it; retires once superseded for OBSERVER_RETIRE_AFTER_MS"
            click.echo(f"superseded: {sf.flow} v{sf.version}: {state}", err=True)
        if wait_s > 0 and not _wait(store, generation, wait_s):
            sys.exit(1)
    except StoreError as exc:
        fail(f"observer deploy: {exc}")
    finally:
        store.close()


def _forget_gone(store: RedisFlowStore) -> None:
    """Processes that have not said what they run for an hour were killed: forget them."""
    now = store.now_ms()
    for process, (_generation, at) in store.processes().items():
        if now - at > _GONE_MS:
            store.forget(process)


def _wait(store: RedisFlowStore, generation: int, wait_s: float) -> bool:
    """Until every process that said what it runs in the last 30 s runs `generation` or later;
    False (and what lags) after `wait_s`."""
    start = time.monotonic()
    while True:
        now = store.now_ms()
        live = {p: g for p, (g, at) in store.processes().items() if now - at <= _STALE_MS}
        behind = sorted(p for p, g in live.items() if g < generation)
        if not live:
            click.echo("no process of the group is running: they run it when they start", err=True)
            return True
        if not behind:
            took = time.monotonic() - start
            click.echo(
                f"live on {len(live)} process{'es' if len(live) != 1 else ''} "
                f"(generation {generation}) after {took:.1f}s",
                err=True,
            )
            return True
        if time.monotonic() - start > wait_s:
            click.echo(
                f"not live after {wait_s:g}s on: {', '.join(behind)} (generation {generation})",
                err=True,
            )
            return False
        time.sleep(0.2)
