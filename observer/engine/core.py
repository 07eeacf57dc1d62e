"""The engine: applies events and fires timers on one (flow, key) slot, returning effects.

Everything is a function of (deployed flows, slot, input, time): the same inputs always give
the same state and the same effects, ids included. Times are epoch ms; "now" is always passed in.
`Engine` finds the flow version that governs a slot and hands the work to `machine` (the
transitions), `timers` (what is due when) and, through them, `alerts` (what is published).
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from observer.engine import alias_slots, timers
from observer.engine.aliases import bounce, pending
from observer.engine.effects import Effect, Hop
from observer.engine.machine import (
    Turn,
    apply_to_ended,
    apply_to_open,
    buffer_early,
    fire_instance_timer,
    orphan,
    receive,
    start,
)
from observer.engine.state import Event, InstanceState, KeySlot
from observer.engine.timers import Timer
from observer.errors import ObserverError
from observer.flows.aliases import split_alias_flow
from observer.flows.compiled import CompiledFlow, CompiledStep
from observer.flows.registry import FlowRegistry
from observer.limits import MAX_EARLY_EVENTS
from observer.topics import Topics

__all__ = ["Engine", "VersionUnavailable"]


class VersionUnavailable(ObserverError):
    """An instance's flow version is not deployed (any more): it is never run on another
    version. The runtime dead-letters its events and retries its timers later, loudly."""

    def __init__(self, flow: str, version: int, deployed: list[int]) -> None:
        self.flow, self.version = flow, version
        have = ", ".join(f"v{v}" for v in deployed) or "none"
        super().__init__(
            f"flow '{flow}' version {version} is not deployed (deployed: {have}); "
            "its instance is not run on another version"
        )


# interpreted subclasses allowed: tests inject an engine that fails (a compiled class's methods
# cannot be patched); it costs one generic call per event
@mypyc_attr(allow_interpreted_subclasses=True)
class Engine:
    """Runs deployed flows over key slots. Holds no per-instance state of its own."""

    def __init__(
        self,
        registry: FlowRegistry,
        topics: Topics | None = None,
        buffer_limit: int = MAX_EARLY_EVENTS,
    ) -> None:
        self._registry = registry
        self._versions: dict[tuple[str, int], CompiledFlow] = {}
        self.topics = topics or Topics()
        self.buffer_limit = buffer_limit

    @property
    def registry(self) -> FlowRegistry:
        return self._registry

    @registry.setter
    def registry(self, registry: FlowRegistry) -> None:
        """Deploy a new set of flows (the version cache is rebuilt lazily)."""
        self._registry = registry
        self._versions = {}

    # -- inputs -----------------------------------------------------------------------------------

    def apply(
        self, slot: KeySlot, event: Event, now: int, watermark: int | None = None
    ) -> list[Effect]:
        """Apply one event to its slot (mutated in place); `now` is the observer's time (ms),
        `watermark` the event-time clock as the event is observed (default: `now`)."""
        out: list[Effect] = []
        inst = slot.instance
        if inst is None:
            name, alias = split_alias_flow(slot.flow)
            flow = self._registry.newest(name)
            if alias is not None:  # an event via an alias value
                return alias_slots.via_event(slot, flow, alias, event, now, self.buffer_limit)
            ref = (event.source, event.type)
            if event.source in flow.sources and ref in flow.start.on:
                start(slot, flow, event, now, self.topics, out, watermark)
            elif ref in flow.step_index or ref in flow.error_index or ref in flow.alias_from:
                buffer_early(slot, flow, event, now, self.buffer_limit, out)
            return out
        flow = self._versions.get((slot.flow, inst.version)) or self._flow_of(slot, inst)
        if inst.outcome is not None:
            apply_to_ended(Turn(slot, inst, flow, now, self.topics, out), event)
            return out
        turn = Turn(slot, inst, flow, now, self.topics, out, watermark)
        apply_to_open(turn, event)
        return out

    def deliver(
        self, slot: KeySlot, hop: Hop, now: int, watermark: int | None = None
    ) -> list[Effect]:
        """Deliver a message of another slot (aliases) to this one (mutated in place)."""
        name, alias = split_alias_flow(slot.flow)
        if alias is not None:
            flow = self._registry.newest(name)
            return alias_slots.receive_at_alias(slot, flow, alias, hop, now, self.buffer_limit)
        inst = slot.instance
        if inst is None or inst.started_at != hop.started:  # not the instance it was meant for
            return bounce(hop)
        out: list[Effect] = []
        receive(Turn(slot, inst, self._flow_of(slot, inst), now, self.topics, out, watermark), hop)
        return out

    def fire(self, slot: KeySlot, watermark: int, now: int | None = None) -> list[Effect]:
        """Fire every timer of the slot due at or before `watermark`, each at its own time, in
        time order. `now` (default: the watermark) is recorded as `detected_at`."""
        out: list[Effect] = []
        at = watermark if now is None else now
        alias = split_alias_flow(slot.flow)[1]
        while slot.instance is not None or slot.buffer:
            inst = slot.instance
            if inst is not None and inst.aliases and inst.open and pending(inst):
                break  # waits for an alias value's answer, which may bring events
            flow = self.flow_of(slot)
            timer = timers.next_timer(flow, slot, True)
            if timer is None or timer[0] > watermark:
                break
            due, rank, kind, step = timer
            if inst is None:  # an orphan timer: `rank` is the early event's reading order
                out += orphan(slot, flow, due, rank, at, self.topics, alias)
            else:
                turn = Turn(slot, inst, flow, at, self.topics, out)
                fire_instance_timer(turn, kind, step, due)
        return out

    def timers(self, slot: KeySlot) -> list[Timer]:
        """Pending timers of the slot, soonest first (ties in declaration order)."""
        if slot.instance is None and not slot.buffer:
            return []
        return timers.timers(self.flow_of(slot), slot)

    def next_due(self, slot: KeySlot, lifecycle: bool = True) -> int | None:
        """When the slot next needs `fire` (None: never); without `lifecycle`, ignoring
        expire and retain. Runs for every slot written."""
        inst = slot.instance
        if inst is not None:
            if inst.aliases and inst.open and pending(inst):
                return None  # due again once the answer came
            flow = self._versions.get((slot.flow, inst.version)) or self._flow_of(slot, inst)
            return timers.next_due(flow, slot, lifecycle)
        if not slot.buffer:
            return None
        return timers.next_due(self.flow_of(slot), slot, lifecycle)

    # -- state queries ----------------------------------------------------------------------------

    def flow_of(self, slot: KeySlot) -> CompiledFlow:
        """The compiled flow version that governs the slot (its instance's, or the newest)."""
        if slot.instance is None:
            return self._registry.newest(split_alias_flow(slot.flow)[0])
        return self._flow_of(slot, slot.instance)

    def _flow_of(self, slot: KeySlot, inst: InstanceState) -> CompiledFlow:
        """The instance's own version; raises VersionUnavailable rather than take another."""
        flow = self._versions.get((slot.flow, inst.version))
        if flow is None:
            registry = self._registry
            flow = registry.get(slot.flow, inst.version)
            if flow is None:
                raise VersionUnavailable(slot.flow, inst.version, registry.versions(slot.flow))
            self._versions[(slot.flow, inst.version)] = flow
        return flow

    @staticmethod
    def anchor_time(flow: CompiledFlow, inst: InstanceState, step: CompiledStep) -> int | None:
        """When the step's window starts: the latest of its anchors' times (None while one is
        not observed), or its path's entry time when it has no anchors."""
        return timers.anchor_time(inst, step)

    def deadline(self, flow: CompiledFlow, inst: InstanceState, step: CompiledStep) -> int | None:
        """The step's deadline (ms), if it has a window and its anchors are observed."""
        return timers.deadline(inst, step)
