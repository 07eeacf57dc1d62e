"""`GuardBook`: the guardrails of `observer replay` (and of the demo's expectations).

Deviations of guarded flows wait here until the virtual clock (replay's watermark) has passed
their time, then `GuardState.decide` decides them: what `observer run`'s decider does with the
state it keeps in Redis, so replay prints what the live observer publishes and holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from observer.engine.effects import Effect, Publish
from observer.flows.compiled import CompiledGuardrails
from observer.guardrails.gate import GuardState, IncidentNote, Waiting
from observer.guardrails.split import held_copy, split_effects

__all__ = ["GuardBook"]


class GuardBook:
    """Per flow: the deviations waiting and the guardrail state. `rails_of(flow)` gives the
    guardrails in force (the newest version's); `hold_all` holds every action record."""

    def __init__(
        self,
        rails_of: Callable[[str], CompiledGuardrails],
        alerts_topic: str,
        *,
        hold_all: bool = False,
    ) -> None:
        self.rails_of = rails_of
        self.alerts_topic = alerts_topic
        self.hold_all = hold_all
        self.states: dict[str, GuardState] = {}
        self.waiting: dict[str, list[Waiting[Publish]]] = {}

    def take(self, flow: str, key: str, effects: Sequence[Effect]) -> list[Effect]:
        """The effects of one engine call: those that go on now (the rest wait here)."""
        rails = self.rails_of(flow)
        if not (rails.active or self.hold_all) or not any(
            isinstance(e, Publish) and e.deviation is not None for e in effects
        ):
            return list(effects)
        now, waiting = split_effects(flow, key, effects, rails, hold_all=self.hold_all)
        if waiting:
            self.waiting.setdefault(flow, []).extend(waiting)
        return now

    def settle(self, upto: int) -> list[Publish]:
        """Decide what waits with a time at or before `upto` and close the incidents whose time
        came: the records to write, held ones as held copies (flows in name order)."""
        out: list[Publish] = []
        for flow in sorted(set(self.waiting) | set(self.states)):
            queue = self.waiting.get(flow, [])
            ready = [w for w in queue if w.ref.at <= upto]
            state = self.states.get(flow)
            if not ready and (state is None or not state.open):
                continue
            if len(ready) < len(queue):
                self.waiting[flow] = [w for w in queue if w.ref.at > upto]
            else:
                self.waiting.pop(flow, None)
            state = self.states.setdefault(flow, GuardState())
            decided = state.decide(
                flow,
                self.rails_of(flow),
                ready,
                upto,
                alerts_topic=self.alerts_topic,
                paused=self.hold_all,
            )
            for d in decided:
                if isinstance(d, IncidentNote) or d.outcome == "publish":
                    out.append(d.record)
                elif d.outcome == "hold":
                    out.append(held_copy(d.record, d.reason or "held"))
        return out

    def next_due(self) -> int | None:
        """The earliest time something here needs the clock: a waiting deviation's time, or an
        open incident's close (None: nothing)."""
        times = [w.ref.at for queue in self.waiting.values() for w in queue]
        for flow, state in self.states.items():
            close = state.next_close(self.rails_of(flow))
            if close is not None:
                times.append(close)
        return min(times, default=None)
