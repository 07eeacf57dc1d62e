"""Aliases (correlation by a second id): instances known by more ids than their key.

An alias value has a slot of its own, `(<flow>/<alias>, value)`, like an instance's
`(flow, key)`: it holds who holds the value (`AliasHold`) and the events that came via the value
before anyone did. Slots talk with `Hop` messages, which `observer run` carries through the keyed
topic (so the alias slot and the instance may live in different processes) and replay delivers
at once:

    instance                              alias slot (flow/alias, value)
    a `from` event applied  ── register ─▶  free, held by an ended instance, or by this one:
                                            held; the buffered events go back with the answer
            ◀── registered (events) ──
                                            held by another open instance:
            ◀── conflict (held_by) ──       (the instance raises `alias_conflict`)
                                          ◀ an event via the value: buffered while nobody
            ◀── forward (event) ──          holds it (then `orphaned` after `buffer`), else
                                            forwarded to the holder
    ended                   ── ended ──▶    a new open instance may take the value
    key freed (retain)      ── free ───▶    nobody holds it
    a forward for an instance that is gone ── bounce ─▶ buffered, or forwarded to the new holder

Every handler is idempotent: a message handled twice (after a crash) changes nothing, events
are recognised by their ids as always. While an instance waits for the answer to a register it
fires no timer (`pending`): the events buffered for the value are on their way to it.

This module is the instance's side; `alias_slots.py` the alias slot's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from observer.engine.alerts import Deviation
from observer.engine.effects import Effect, Hop
from observer.engine.state import (
    ALIAS_CONFLICT,
    ALIAS_HELD,
    ALIAS_PENDING,
    Event,
    InstanceState,
)

if TYPE_CHECKING:
    from observer.engine.machine import Turn

__all__ = [
    "alias_text",
    "bounce",
    "end_aliases",
    "free_aliases",
    "pending",
    "register",
    "take_answer",
]


def alias_text(value: Any) -> str | None:
    """An alias value as text, read like a correlation key: a non-empty string, or a number
    (its decimal text); None if there is none."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        return None
    return str(value)


def pending(inst: InstanceState) -> bool:
    """Whether the instance waits for the answer to a register (it fires no timer meanwhile)."""
    return any(status == ALIAS_PENDING for _v, status in inst.aliases.values())


# -- the instance's side ---------------------------------------------------------------------------


def register(turn: Turn, event: Event) -> None:
    """A `from` event applied to an open instance: ask for each alias value it carries. The
    first value of an alias stays (a later one is recorded); a refused one may be replaced."""
    flow = turn.flow
    inst = turn.inst
    for idx in flow.alias_from.get((event.source, event.type), ()):
        alias = flow.aliases[idx]
        value = alias_text(event.captures.get(alias.value))
        if value is None:
            turn.record(
                f"{event.type} {event.id}: no value for alias {alias.name} at {alias.value}"
            )
            continue
        known = inst.aliases.get(idx)
        if known is not None and (known[1] != ALIAS_CONFLICT or known[0] == value):
            if known[0] != value:
                turn.record(f"alias {alias.name}: keeps {known[0]}, not {value}")
            continue
        inst.aliases[idx] = (value, ALIAS_PENDING)
        turn.out.append(
            Hop(
                "register",
                flow.name,
                alias.name,
                value,
                turn.slot.key,
                inst.started_at,
                source=event.source,
            )
        )


def end_aliases(turn: Turn) -> None:
    """The instance ended: the values it asked for may be taken by a new open instance."""
    _tell(turn, "ended")


def free_aliases(turn: Turn) -> None:
    """The instance's key is freed (after `retain`): so are the values it asked for."""
    _tell(turn, "free")


def _tell(turn: Turn, kind: Any) -> None:
    inst = turn.inst
    flow = turn.flow
    for idx, (value, status) in sorted(inst.aliases.items()):
        if status != ALIAS_CONFLICT:
            name = flow.aliases[idx].name
            turn.out.append(Hop(kind, flow.name, name, value, turn.slot.key, inst.started_at))


def take_answer(turn: Turn, hop: Hop) -> Deviation | None:
    """An alias slot's answer to this instance's register: `registered` makes the value held
    (its events are then applied by the caller), `conflict` refuses it: the `alias_conflict`
    deviation to raise is returned. An answer to nothing asked (a repeat) changes nothing."""
    inst = turn.inst
    alias = turn.flow.alias_named(hop.alias)
    if alias is None or inst.aliases.get(alias.index) != (hop.value, ALIAS_PENDING):
        return None
    if hop.kind == "registered":
        inst.aliases[alias.index] = (hop.value, ALIAS_HELD)
        turn.record(f"alias {hop.alias} {hop.value} held")
        return None
    if hop.kind != "conflict":
        return None
    inst.aliases[alias.index] = (hop.value, ALIAS_CONFLICT)
    trigger = f"alias:{hop.alias}:{hop.value}@{inst.started_at}"
    extra = {"alias": hop.alias, "alias_value": hop.value, "held_by": hop.held_by}
    return Deviation(
        "alias_conflict",
        None,
        None,
        None,
        trigger,
        turn.flow.if_alias_conflict,
        hop.alias,
        extra=extra,
        source=hop.source,
    )


def bounce(hop: Hop) -> list[Effect]:
    """A forward or answer for an instance that is gone (its key freed, or reused by a new
    one): its events go back to the alias slot, which buffers them or finds the new holder."""
    if not hop.events:
        return []
    return [Hop("bounce", hop.flow, hop.alias, hop.value, hop.key, hop.started, hop.events)]
