"""Aliases, the alias slot's side: the slot `(<flow>/<alias>, value)` of one alias value knows
who holds it and keeps the events that came via it before anyone did (see `aliases.py` for the
messages between it and instances).
"""

from __future__ import annotations

from typing import Any

from observer.engine.effects import Effect, Hop, Signal
from observer.engine.machine import buffer_early
from observer.engine.state import AliasHold, Event, KeySlot
from observer.flows.compiled import CompiledFlow

__all__ = ["receive_at_alias", "via_event"]


def via_event(
    slot: KeySlot, flow: CompiledFlow, alias: str, event: Event, now: int, limit: int
) -> list[Effect]:
    """An event that came via the slot's value: forwarded to its holder, else buffered (and
    `orphaned` after `buffer` if nobody registers the value meanwhile)."""
    hold = slot.hold
    if hold is not None:
        return [_forward(flow, alias, slot.key, hold, (event,))]
    out: list[Effect] = []
    buffer_early(slot, flow, event, now, limit, out)
    return out


def receive_at_alias(
    slot: KeySlot, flow: CompiledFlow, alias: str, hop: Hop, now: int, limit: int
) -> list[Effect]:
    """A message of an instance to the value of this slot. `flow` is the newest version."""
    out: list[Effect] = []
    hold = slot.hold
    mine = hold is not None and hold.key == hop.key and hold.started == hop.started
    kind = hop.kind
    if kind == "register":
        # free, held by an instance that ended, or by this key (a repeat, or its new instance)
        if hold is None or not hold.open or hold.key == hop.key:
            slot.hold = AliasHold(hop.key, hop.started, True)
            events = tuple(b.event for b in sorted(slot.buffer, key=lambda b: b.seq))
            slot.buffer = []
            out.append(_answer("registered", flow, hop, events, None))
            if not mine:
                _note(out, flow, slot, f"alias {alias} held by {hop.key}", now)
        else:
            out.append(_answer("conflict", flow, hop, (), hold.key))
    elif kind == "ended":
        if mine and hold is not None:
            hold.open = False
    elif kind == "free":
        if mine:
            slot.hold = None
            _note(out, flow, slot, f"alias {alias} freed by {hop.key}", now)
    elif kind == "bounce":
        for ev in hop.events:
            if hold is not None and not mine:
                out.append(_forward(flow, alias, slot.key, hold, (ev,)))
            else:
                buffer_early(slot, flow, ev, now, limit, out)
    return out


def _answer(
    kind: Any, flow: CompiledFlow, hop: Hop, events: tuple[Event, ...], held_by: str | None
) -> Hop:
    return Hop(
        kind,
        flow.name,
        hop.alias,
        hop.value,
        hop.key,
        hop.started,
        events,
        held_by=held_by,
        source=hop.source,
    )


def _forward(
    flow: CompiledFlow, alias: str, value: str, hold: AliasHold, events: tuple[Event, ...]
) -> Hop:
    return Hop("forward", flow.name, alias, value, hold.key, hold.started, events)


def _note(out: list[Effect], flow: CompiledFlow, slot: KeySlot, note: str, now: int) -> None:
    out.append(Signal("recorded", flow.name, flow.version, slot.key, note, None, now))
