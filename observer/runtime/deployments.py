"""`Deployments`: the flow versions this process runs, kept in step with the group's (issue 15).

At start the flows given to `observer run` are deployed to the `FlowStore` (a version stored
with another definition refuses the start) and every stored version is rebuilt, so an open or
retained instance runs on its own version whatever files were given; the start log names the
versions restored from the store. Then, every `deploy_poll_ms`, the loop asks `poll`: flow files
that changed (or a SIGHUP) are deployed as `observer deploy` does, and a new generation of the
store is rebuilt into a registry the runtime applies between two batches. Every
`retire_interval_ms`, superseded versions that no open or retained instance uses any more are
forgotten (`retire_unused`).

The store, not a process' files, is the truth: new instances take the highest version stored
for their flow, on every process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from observer.config import ObserverConfig
from observer.engine.core import VersionUnavailable
from observer.errors import ConfigError, FlowError, StoreError
from observer.flows.compiled import CompiledFlow
from observer.flows.registry import FlowRegistry
from observer.flows.stored import StoredFlow, rebuild
from observer.metrics import Metrics
from observer.runtime.every import Every
from observer.runtime.ports import Clock, FlowFiles, FlowStore

__all__ = ["Deployments", "UnavailableVersions", "VersionUse", "retire_unused"]

log = logging.getLogger(__name__)

_REPORT_EVERY_S = 60.0

Check = Callable[[FlowRegistry], None]
"""Checks flows about to run (webhook secrets and destinations); raises ConfigError."""


class UnavailableVersions:
    """Loud reports of instances whose flow version is not deployed: the metric counts every
    event and timer, the error log names each (flow, version) at most once a minute."""

    def __init__(self, metrics: Metrics, monotonic: Callable[[], float]) -> None:
        self._metrics = metrics
        self._mono = monotonic
        self._last: dict[tuple[str, int], float] = {}
        self._since: dict[tuple[str, int], int] = {}

    def report(self, exc: VersionUnavailable, what: str) -> None:
        self._metrics.version_unavailable.labels(exc.flow, str(exc.version)).inc()
        key = (exc.flow, exc.version)
        self._since[key] = self._since.get(key, 0) + 1
        now = self._mono()
        last = self._last.get(key)
        if last is not None and now - last < _REPORT_EVERY_S:
            return
        self._last[key] = now
        log.error(
            "%s (%d events or timers since the last report): %s; deploy that version again "
            "(observer deploy FILE) to resume them (docs/changing-flows.md)",
            what,
            self._since.pop(key),
            exc,
            extra={"flow": exc.flow},
        )


@dataclass(frozen=True, slots=True)
class VersionUse:
    """A superseded version, the open and retained instances that use it, whether it retired."""

    stored: StoredFlow
    instances: int
    retired: bool


def retire_unused(
    store: FlowStore, stored: Mapping[str, StoredFlow], retire_after_ms: int
) -> list[VersionUse]:
    """Forget the superseded versions that no open or retained instance uses. A version is
    superseded once a higher one was deployed; it may retire only `retire_after_ms` after that
    (a process that has not seen the higher one yet may still start instances on it). The
    newest version of a flow never retires. Returns every superseded version looked at."""
    by_flow: dict[str, list[StoredFlow]] = {}
    for sf in stored.values():
        by_flow.setdefault(sf.flow, []).append(sf)
    now = store.now_ms()
    out: list[VersionUse] = []
    for name, versions in sorted(by_flow.items()):
        versions.sort(key=lambda sf: sf.version)
        older = versions[:-1]
        if not older:
            continue
        counts = store.instances(name)
        for sf, higher in zip(older, versions[1:], strict=True):
            n = counts.get(sf.version, 0)
            since = higher.deployed_at
            due = since is not None and since + retire_after_ms <= now
            retired = due and n == 0 and store.retire(sf.flow, sf.version, sf.digest)
            if retired:
                log.info("retired %s: no open or retained instance uses it", sf.label)
            out.append(VersionUse(sf, n, retired))
    return out


class Deployments:
    """The registry this process runs and where it comes from (see the module doc). Owned by
    the loop's thread; `request_reload` may be called from any thread (SIGHUP)."""

    def __init__(
        self,
        config: ObserverConfig,
        registry: FlowRegistry,
        store: FlowStore | None,
        files: FlowFiles | None,
        *,
        clock: Clock,
        metrics: Metrics,
        check: Check | None = None,
        process: str = "observer",
    ) -> None:
        """`process` names this process in the store's list of what each one runs."""
        self.registry = registry
        self._given = registry
        self.process = process
        self._store = store
        self._files = files
        self._metrics = metrics
        self._check = check
        self._retire_after_ms = config.retire_after_ms
        self._generation: int | None = None
        self._stored: dict[str, StoredFlow] = {}
        self._compiled: dict[tuple[str, str], CompiledFlow] = {}  # (field, digest) -> flow
        self._broken: set[tuple[str, str]] = set()  # stored versions that do not rebuild
        self._reload = threading.Event()
        self._poll_every = Every(config.deploy_poll_ms / 1000.0, clock.monotonic)
        self._retire_every = Every(config.retire_interval_ms / 1000.0, clock.monotonic)
        self._retire_every.restart()  # not at once: the group has just (re)started
        self._store_down = False

    def request_reload(self) -> None:
        """Load the flow files again at the next turn of the loop (SIGHUP)."""
        self._reload.set()

    # -- start --------------------------------------------------------------------------------------

    def open(self) -> FlowRegistry:
        """Deploy the given flows and rebuild every stored version. Raises ConfigError when a
        given flow is refused, StoreError when the store does not answer."""
        if self._store is None:
            return self.registry
        candidates: list[StoredFlow] = []
        if self._files is not None:
            try:
                registry, candidates = self._files.load()
            except FlowError as exc:
                raise ConfigError(f"the flow files changed and are now invalid:\n{exc}") from None
            self._seed(registry, candidates)
        plan = self._store.deploy(candidates)
        if plan.refused:
            self._metrics.deploys.labels("refused").inc()
            raise ConfigError("flows refused:\n" + "\n".join(str(p) for p in plan.refused))
        self._count(bool(plan.added))
        for sf in plan.added:
            log.info("deployed %s to the group", sf.label)
        self._refresh(force=True)
        assert self._generation is not None
        self._store.report(self.process, self._generation)
        given = {sf.field for sf in candidates}
        restored = [sf.label for f, sf in sorted(self._stored.items()) if f not in given]
        if restored:
            log.info("restored from the store (not among the flow files): %s", "; ".join(restored))
        return self.registry

    def _seed(self, registry: FlowRegistry, candidates: list[StoredFlow]) -> None:
        """Flows compiled from the files stand for their stored versions (same digest)."""
        for sf in candidates:
            flow = registry.get(sf.flow, sf.version)
            if flow is not None:
                self._compiled[(sf.field, sf.digest)] = flow

    def _count(self, added: bool) -> None:
        self._metrics.deploys.labels("deployed" if added else "unchanged").inc()

    def close(self) -> None:
        """Leave the store's list of processes (best effort: a stale entry ages out)."""
        if self._store is None:
            return
        try:
            self._store.forget(self.process)
        except StoreError as exc:
            log.warning("could not leave the list of running processes: %s", exc)

    # -- every turn ---------------------------------------------------------------------------------

    def poll(self) -> FlowRegistry | None:
        """A new registry to run when the group's deployment changed, else None (cheap unless
        `deploy_poll_ms` passed or a reload was asked for)."""
        if self._store is None:
            return None
        forced = self._reload.is_set()
        if not forced and not self._poll_every.due():
            return None
        self._poll_every.restart()
        try:
            if self._files is not None and (forced or self._files.changed()):
                self._reload.clear()
                self._deploy_files()
            new = self._refresh()
            assert self._generation is not None
            self._store.report(self.process, self._generation)
            if self._retire_every.due():
                for use in retire_unused(self._store, self._stored, self._retire_after_ms):
                    sf = use.stored
                    gauge = self._metrics.version_instances.labels(sf.flow, str(sf.version))
                    gauge.set(use.instances)
                new = self._refresh() or new
        except StoreError as exc:
            if forced:
                self._reload.set()  # the files are deployed once the store answers
            if not self._store_down:
                log.warning("cannot look for new flow deployments: %s", exc)
            self._store_down = True
            return None
        self._store_down = False
        return new

    def _deploy_files(self) -> None:
        assert self._store is not None and self._files is not None
        try:
            registry, candidates = self._files.load()
            if self._check is not None:
                self._check(registry)
        except FlowError as exc:
            self._metrics.deploys.labels("invalid").inc()
            log.error("the flow files changed but are invalid; nothing changes:\n%s", exc)
            return
        except ConfigError as exc:
            self._metrics.deploys.labels("refused").inc()
            log.error("the flow files changed but cannot run; nothing changes: %s", exc)
            return
        self._seed(registry, candidates)
        try:
            plan = self._store.deploy(candidates)
        except StoreError:
            self._reload.set()
            raise
        if plan.refused:
            self._metrics.deploys.labels("refused").inc()
            log.error(
                "the flow files changed but are refused; nothing changes:\n%s",
                "\n".join(str(p) for p in plan.refused),
            )
            return
        self._count(bool(plan.added))
        for sf in plan.added:
            log.info("deployed %s to the group (the flow files changed)", sf.label)

    def _refresh(self, force: bool = False) -> FlowRegistry | None:
        """Rebuild the registry from the store when its generation moved."""
        assert self._store is not None
        generation = self._store.generation()
        if generation == self._generation and not force:
            return None
        stored = self._store.stored()
        registry = self._build(stored)
        self._generation = generation
        self._stored = stored
        self._metrics.deploy_generation.set(generation)
        before = {(f.name, f.version) for f in self.registry}
        after = {(f.name, f.version) for f in registry}
        changed = before != after or any(
            registry.get(n, v) is not self.registry.get(n, v) for n, v in after
        )
        if not changed and not force:
            return None
        for name in registry.names():
            self._metrics.flow_versions.labels(name).set(len(registry.versions(name)))
        added = sorted(after - before)
        if not force:
            log.info(
                "deployment %d: running %s (new: %s; retired: %s)",
                generation,
                ", ".join(f"{n} v{v}" for n, v in sorted(after)) or "no flow",
                ", ".join(f"{n} v{v}" for n, v in added) or "none",
                ", ".join(f"{n} v{v}" for n, v in sorted(before - after)) or "none",
            )
        self._check_new(registry, added)
        self.registry = registry
        return registry

    def _build(self, stored: Mapping[str, StoredFlow]) -> FlowRegistry:
        registry = FlowRegistry()
        for sf in sorted(stored.values(), key=lambda s: (s.flow, s.version)):
            key = (sf.field, sf.digest)
            flow = self._compiled.get(key)
            if flow is None and key not in self._broken:
                try:
                    flow = self._compiled[key] = rebuild(sf)
                except FlowError as exc:
                    self._broken.add(key)
                    log.error(
                        "stored %s cannot be rebuilt by this observer; its instances are not "
                        "run until it can be:\n%s",
                        sf.label,
                        exc,
                    )
            if flow is not None:
                registry.add(flow)
        if self._files is None:  # flows given without their files: run them, not kept
            for flow in self._given:
                if registry.get(flow.name, flow.version) is None:
                    registry.add(flow)
        return registry

    def _check_new(self, registry: FlowRegistry, added: list[tuple[str, int]]) -> None:
        """Webhooks of versions deployed by others are checked here too: a secret missing in
        this process' environment is an error (its webhooks will be refused), not a refusal
        (the group runs the version already)."""
        if self._check is None or not added:
            return
        new = FlowRegistry()
        for name, version in added:
            flow = registry.get(name, version)
            if flow is not None:
                new.add(flow)
        try:
            self._check(new)
        except ConfigError as exc:
            log.error("a deployed flow version cannot run fully in this process: %s", exc)
