"""The orders of a workload: each follows the flow's main path with step times drawn from the
flow itself, and a known share of them has a deviation (`missing`, `late`, `error`; see
`benchmarks/workload.py`)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from observer.flows.compiled import CompiledFlow, CompiledStep

__all__ = ["FAULTS", "Emit", "OrderModel", "fault_of", "order_key"]

FAULTS = ("missing", "late", "error")


@dataclass(frozen=True, slots=True)
class Emit:
    """One event of an order: `at` is its event time (ms); `read_at` the replay clock when it
    differs (a record read earlier than its event time suggests)."""

    step: int  # step index, or -1 - error index for an error event
    source: str
    type: str
    at: int
    read_at: int | None = None


def _bound(step: CompiledStep) -> int:
    """How far into its window an on-time step may come (ms): half its window or warn point."""
    if step.within_ms is None:
        return 10_000
    b = step.within_ms if step.warn_ms is None else min(step.within_ms, step.warn_ms)
    return max(1, b // 2)


@dataclass
class OrderModel:
    """Draws the events of one order (pure: the same rng state gives the same order)."""

    flow: CompiledFlow
    missing_step: CompiledStep
    late_step: CompiledStep
    error_index: int
    error_replaces: CompiledStep
    scale: float = 1.0
    _main: tuple[int, ...] = field(init=False)
    _topo_cache: dict[tuple[int, ...], list[tuple[CompiledStep, tuple[int, ...]]]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self._main = self.flow.paths[0].steps
        # keep a happy order inside the SLA's warn point (with room to spare)
        sla = self.flow.sla
        if sla is not None:
            budget = 0.8 * (sla.warn_ms if sla.warn_ms is not None else sla.within_ms)
            worst = self._path_times(self._main, 0, lambda s: _bound(s), skip=set())
            longest = max(worst.values(), default=0)
            if longest > budget:
                self.scale = budget / longest

    @classmethod
    def build(
        cls, flow: CompiledFlow, missing: str | None = None, late: str | None = None
    ) -> OrderModel:
        main = [flow.steps[i] for i in flow.paths[0].steps]
        windowed = [s for s in main[1:] if s.within_ms is not None and not s.optional]
        if not windowed:
            raise SystemExit(f"flow {flow.name}: no windowed step to make missing or late")
        m = flow.step_named(missing) if missing else windowed[0]
        with_late = [s for s in windowed if s.if_late.actions or s.if_late.alert is False]
        lt = flow.step_named(late) if late else (with_late[0] if with_late else m)
        if not flow.errors:
            raise SystemExit(f"flow {flow.name}: no `errors:` to inject a failure with")
        err = next((e for e in flow.errors if e.handler.then is not None), flow.errors[0])
        esrc = sorted(err.on)[0][0]
        replaces = next((s for s in main[1:] if any(src == esrc for src, _ in s.on)), m)
        return cls(flow, m, lt, err.index, replaces)

    def _topo(self, steps: Sequence[int]) -> list[tuple[CompiledStep, tuple[int, ...]]]:
        """A path's steps with anchors before dependents (cached); anchors outside the path
        are dropped (the step is anchored at the path's entry)."""
        key = tuple(steps)
        cached = self._topo_cache.get(key)
        if cached is not None:
            return cached
        inside = set(steps)
        order: list[tuple[CompiledStep, tuple[int, ...]]] = []
        done: set[int] = set()
        pending = list(steps)
        while pending:
            for idx in list(pending):
                step = self.flow.steps[idx]
                anchors = tuple(a for a in step.anchors if a in inside)
                if all(a in done for a in anchors):
                    order.append((step, anchors))
                    done.add(idx)
                    pending.remove(idx)
                    break
            else:
                raise SystemExit(f"flow {self.flow.name}: anchors form a cycle")
        self._topo_cache[key] = order
        return order

    def _path_times(
        self,
        steps: Sequence[int],
        entry: int,
        offset: Callable[[CompiledStep], float],
        skip: set[int],
    ) -> dict[int, int]:
        """Event time of each step of a path given an offset rule; steps anchored (directly
        or not) on a skipped step are skipped too (`skip` gains them)."""
        times: dict[int, int] = {}
        for step, anchors in self._topo(steps):
            idx = step.index
            if idx in skip or any(a in skip for a in anchors):
                skip.add(idx)
            elif step.is_start:
                times[idx] = entry
            elif anchors:
                times[idx] = max([times[a] for a in anchors]) + int(offset(step))
            else:
                times[idx] = entry + int(offset(step))
        return times

    def _on_time(self, rng: random.Random) -> Callable[[CompiledStep], float]:
        return lambda s: _bound(s) * self.scale * (0.05 + 0.45 * rng.random())

    def _emits(self, times: dict[int, int], rng: random.Random) -> list[Emit]:
        out = []
        for idx, t in times.items():
            step = self.flow.steps[idx]
            on = sorted(step.on)
            src, typ = on[rng.randrange(len(on))] if len(on) > 1 else on[0]
            out.append(Emit(idx, src, typ, t))
        return out

    def _reaction(self, step: CompiledStep, deadline: int, rng: random.Random) -> list[Emit]:
        """The services answer the observer's commands: the path `if_missing` switches to."""
        then = step.if_missing.then
        if then is None:
            return []
        path = self.flow.paths[then]
        times = self._path_times(path.steps, deadline, self._on_time(rng), skip=set())
        return self._emits(times, rng)

    def order(self, start: int, fault: str | None, rng: random.Random) -> list[Emit]:
        """The events of one order starting at `start`, in no particular order."""
        on_time = self._on_time(rng)
        if fault is None:
            return self._emits(self._path_times(self._main, start, on_time, set()), rng)
        if fault == "missing":
            m = self.missing_step
            skip = {m.index}
            times = self._path_times(self._main, start, on_time, skip)
            anchor = max((times[a] for a in m.anchors), default=start)
            assert m.within_ms is not None
            return self._emits(times, rng) + self._reaction(m, anchor + m.within_ms, rng)
        if fault == "late":
            lt = self.late_step
            assert lt.within_ms is not None
            within = lt.within_ms

            def late_rule(s: CompiledStep) -> float:
                if s.index == lt.index:
                    return within + 1000 + rng.random() * max(0, within // 2 - 1000)
                return on_time(s)

            times = self._path_times(self._main, start, late_rule, set())
            anchor = max((times[a] for a in lt.anchors), default=start)
            emits = self._emits(times, rng)
            return emits + self._reaction(lt, anchor + within, rng)
        if fault == "error":
            r = self.error_replaces
            keep = self._path_times(self._main, start, on_time, {r.index})
            anchor = max((keep[a] for a in r.anchors if a in keep), default=start)
            t_err = anchor + int(on_time(r))  # where the replaced step would have come
            err = self.flow.errors[self.error_index]
            esrc, etyp = sorted(err.on)[0]
            emits = [*self._emits(keep, rng), Emit(-1 - err.index, esrc, etyp, t_err)]
            then = err.handler.then
            if then is not None:
                path = self.flow.paths[then]
                emits += self._emits(self._path_times(path.steps, t_err, on_time, set()), rng)
            return emits
        raise ValueError(f"unknown fault {fault!r}")

    def fault_step(self, fault: str) -> str:
        if fault == "missing":
            return self.missing_step.name
        if fault == "late":
            return self.late_step.name
        err = self.flow.errors[self.error_index]
        return "/".join(f"{s}.{t}" for s, t in sorted(err.on))

    def horizon_ms(self) -> int:
        """An upper bound of how long after its start an order's last event comes."""
        total = 0
        for s in self.flow.steps:
            total += int(s.within_ms or 10_000) * 2
        return total


def order_key(style: str, seed: int, i: int) -> str:
    if style == "uuid":  # a fixed scramble of (seed, i): unique, cheap, looks random
        n = ((i + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835 + seed * 0x632BE59BD9B4E019) % (1 << 128)
        return str(uuid.UUID(int=n, version=4))
    return f"o-{i}"


def fault_of(i: int, rate: float, kinds: Sequence[str]) -> str | None:
    """Every round(1/rate)-th order (from the middle of each stride) gets a fault, kinds in turn."""
    if rate <= 0 or not kinds:
        return None
    stride = max(1, round(1 / rate))
    if i % stride != stride // 2:
        return None
    return kinds[(i // stride) % len(kinds)]
