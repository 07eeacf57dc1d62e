"""`InMemoryFlowStore` and `InMemoryFlowFiles`: the `FlowStore` and `FlowFiles` ports in memory
(issue 15), with the semantics of `RedisFlowStore` and `WatchedFlowFiles`.

Several worlds share one `InMemoryFlowStore` to run several processes of a group. Its clock is
the world's; `available = False` makes every request raise StoreError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import orjson

from observer.errors import FlowError, FlowProblem, StoreError
from observer.flows.loader import LoadedFlow, load_flow_text
from observer.flows.registry import FlowRegistry
from observer.flows.stored import DeployPlan, StoredFlow, deployable, plan_deploy

__all__ = ["InMemoryFlowFiles", "InMemoryFlowStore"]


class InMemoryFlowStore:
    """Deployed versions in a dict; `states()` gives (slot id, state bytes) of the state store
    (for counting instances per version)."""

    def __init__(
        self,
        now_ms: Callable[[], int],
        states: Callable[[], Iterable[tuple[str, bytes]]] = lambda: (),
    ) -> None:
        self._now_ms = now_ms
        self._states = states
        self.flows: dict[str, StoredFlow] = {}
        self._generation = 0
        self.running: dict[str, tuple[int, int]] = {}
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise StoreError("the in-memory flow store is unavailable")

    def deploy(self, flows: Sequence[StoredFlow]) -> DeployPlan:
        self._check()
        plan = plan_deploy(flows, self.flows)
        if plan.refused or not plan.added:
            return plan
        now = self._now_ms()
        plan.added = [dataclasses.replace(sf, deployed_at=now) for sf in plan.added]
        for sf in plan.added:
            self.flows[sf.field] = sf
        self._generation += 1
        return plan

    def generation(self) -> int:
        self._check()
        return self._generation

    def stored(self) -> dict[str, StoredFlow]:
        self._check()
        return dict(self.flows)

    def instances(self, flow: str) -> dict[int, int]:
        self._check()
        counts: dict[int, int] = {}
        for sid, state in self._states():
            if sid.partition(":")[0] != flow:
                continue
            version = orjson.loads(state)[1]
            if isinstance(version, int):
                counts[version] = counts.get(version, 0) + 1
        return counts

    def retire(self, flow: str, version: int, digest: str) -> bool:
        self._check()
        field = f"{flow}:{version}"
        sf = self.flows.get(field)
        if sf is None or sf.digest != digest:
            return False
        del self.flows[field]
        self._generation += 1
        return True

    def now_ms(self) -> int:
        self._check()
        return self._now_ms()

    def report(self, process: str, generation: int) -> None:
        self._check()
        self.running[process] = (generation, self._now_ms())

    def processes(self) -> dict[str, tuple[int, int]]:
        self._check()
        return dict(self.running)

    def forget(self, process: str) -> None:
        self._check()
        self.running.pop(process, None)

    def close(self) -> None:
        pass


class InMemoryFlowFiles:
    """Flow files as texts by name; `write` changes one (seen by `changed`)."""

    def __init__(self, files: Mapping[str, str] | None = None) -> None:
        self.files = dict(files or {})
        self._changed = True

    def write(self, name: str, text: str) -> None:
        self.files[name] = text
        self._changed = True

    def changed(self) -> bool:
        return self._changed

    def load(self) -> tuple[FlowRegistry, list[StoredFlow]]:
        self._changed = False
        loaded: list[LoadedFlow] = []
        problems: list[FlowProblem] = []
        for name, text in sorted(self.files.items()):
            got, bad = load_flow_text(text, name)
            loaded += got
            problems += bad
        if problems:
            raise FlowError(problems)
        return deployable(loaded)
