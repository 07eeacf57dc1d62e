"""Deployed flows by name and version; new instances take the newest version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from observer.flows.compiled import CompiledFlow

__all__ = ["FlowRegistry"]


class FlowRegistry:
    """Every deployed version of every flow, and the index from topic to (flow, source)."""

    def __init__(self) -> None:
        self._flows: dict[str, dict[int, CompiledFlow]] = {}

    def copy(self) -> FlowRegistry:
        r = FlowRegistry()
        r._flows = {k: dict(v) for k, v in self._flows.items()}
        return r

    def clash(self, flow: CompiledFlow) -> CompiledFlow | None:
        """The deployed flow of the same name and version from another file, if any."""
        other = self._flows.get(flow.name, {}).get(flow.version)
        if other is not None and Path(other.file).resolve() != Path(flow.file).resolve():
            return other
        return None

    def add(self, flow: CompiledFlow) -> None:
        self._flows.setdefault(flow.name, {})[flow.version] = flow

    def names(self) -> list[str]:
        return sorted(self._flows)

    def newest(self, name: str) -> CompiledFlow:
        versions = self._flows[name]
        return versions[max(versions)]

    def get(self, name: str, version: int) -> CompiledFlow | None:
        return self._flows.get(name, {}).get(version)

    def versions(self, name: str) -> list[int]:
        return sorted(self._flows.get(name, {}))

    def __iter__(self) -> Iterator[CompiledFlow]:
        for name in sorted(self._flows):
            for v in sorted(self._flows[name]):
                yield self._flows[name][v]

    def newest_flows(self) -> list[CompiledFlow]:
        return [self.newest(n) for n in self.names()]

    def topics(self) -> list[str]:
        """Every source topic of every deployed version."""
        return sorted({s.topic for f in self for s in f.sources.values()})
