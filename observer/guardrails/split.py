"""Which effects of an engine call wait for the guardrails (contract §7).

A deviation waits when its flow's guardrails may decide about it (`CompiledGuardrails.deferred`:
its kind may open or join an incident, or the flow limits its action rate): its alert and action
records are taken out of the effects, in order, as one `Waiting`. Everything else goes on at
once; with `hold_all` (`OBSERVER_ACTIONS=hold` in replay) the action records that go on at once
become held copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from observer.engine.effects import Effect, Publish
from observer.flows.compiled import CompiledGuardrails
from observer.guardrails.gate import Waiting

__all__ = ["held_copy", "split_effects"]


def held_copy(p: Publish, reason: str) -> Publish:
    """The record as held (`held` = why), same id."""
    return dataclasses.replace(p, held=reason)


def split_effects(
    flow: str,
    key: str,
    effects: Sequence[Effect],
    rails: CompiledGuardrails,
    *,
    hold_all: bool = False,
) -> tuple[list[Effect], list[Waiting[Publish]]]:
    """(effects that go on now, deviations that wait), both in order."""
    now: list[Effect] = []
    waiting: list[Waiting[Publish]] = []
    by_id: dict[str, Waiting[Publish]] = {}
    for eff in effects:
        ref = eff.deviation if isinstance(eff, Publish) else None
        if ref is None:
            now.append(eff)
            continue
        assert isinstance(eff, Publish)
        if rails.deferred(ref.kind):
            w = by_id.get(ref.id)
            if w is None:
                w = by_id[ref.id] = Waiting(flow, key, ref)
                waiting.append(w)
            w.records.append((eff, eff.action))
        elif hold_all and eff.action is not None:
            now.append(held_copy(eff, "paused"))
        else:
            now.append(eff)
    return now, waiting
