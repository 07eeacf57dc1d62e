"""Byte budgets of what the engine keeps for a key: early events and captured values.

An early event is kept until its instance starts (or `buffer` runs out); a producer that
sends thousands of them for one key, or large ones, must not grow one slot without bound (the
state store keeps a slot in one value). A captured value over its budget (`ingest` decides) is
kept as a marker, `dropped_capture`, which templates cannot use: an action that needs it is not
carried out (it is listed in its alert's `action_errors`), rather than published with a value
that is not the event's. The limits are in `observer.limits`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from observer.engine.state import BufferedEvent, Event
from observer.limits import MAX_EARLY_EVENT_BYTES

__all__ = ["DROPPED", "dropped_capture", "early_event_refused", "event_bytes"]

DROPPED = "\u0000observer: not kept"
"""The key of the marker a captured value over its budget is kept as (no event has it)."""


def dropped_capture(size: int) -> dict[str, int]:
    """What is kept of a captured value of `size` bytes over the budget."""
    return {DROPPED: size}


def _value_bytes(value: Any) -> int:
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float:
        return 24
    if kind is str:
        return len(value) + 2
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return len(str(value))


def event_bytes(event: Event) -> int:
    """About what an early event takes in the slot's stored state (JSON)."""
    size = 40 + len(event.source) + len(event.type) + len(event.id)
    for name, value in event.captures.items():
        size += len(name) + 4 + _value_bytes(value)
    return size


def early_event_refused(
    buffer: Sequence[BufferedEvent], event: Event, count_limit: int
) -> str | None:
    """Why `event` cannot join the early events of its key (None: it can)."""
    if len(buffer) >= count_limit:
        return f"early event {event.type} {event.id} dropped: {count_limit} are kept already"
    held = sum(event_bytes(b.event) for b in buffer)
    size = event_bytes(event)
    if held + size > MAX_EARLY_EVENT_BYTES:
        return (
            f"early event {event.type} {event.id} dropped: {size} bytes over the budget of the "
            f"key's early events ({held} of {MAX_EARLY_EVENT_BYTES} bytes held)"
        )
    return None
