"""What operators do with held actions (contract §7), over the `HeldActions` port: shared by
`observer actions` and the ops API's control endpoints, so both select and show the same.

A selection is every held action of a flow, narrowed by incident id, instance key and/or
observer-ids. Releasing or dropping takes each selected entry from the store exactly once
(what another operator took meanwhile is not counted)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from observer.guardrails.gate import GuardState
from observer.runtime.guard_ports import HeldActions
from observer.runtime.held import HeldAction
from observer.timefmt import format_time

__all__ = ["Selection", "describe_guard", "held_actions", "ids_of", "release_or_drop", "view"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which held actions of `flow`: all of them, or those of an incident, a key, some ids."""

    flow: str
    incident: str | None = None
    key: str | None = None
    ids: tuple[str, ...] = ()

    def matches(self, h: HeldAction) -> bool:
        return (
            (self.incident is None or h.incident == self.incident)
            and (self.key is None or h.key == self.key)
            and (not self.ids or h.observer_id in self.ids)
        )


def held_actions(port: HeldActions, sel: Selection) -> list[HeldAction]:
    """The selected held actions, oldest deviation first (then by observer-id)."""
    out = []
    for data in port.held(sel.flow):
        try:
            h = HeldAction.decode(data)
        except ValueError as exc:
            log.warning("a held action of %s cannot be decoded (%s); skipped", sel.flow, exc)
            continue
        if sel.matches(h):
            out.append(h)
    out.sort(key=lambda h: (h.at, h.observer_id))
    return out


def release_or_drop(port: HeldActions, sel: Selection, mode: str, at: int) -> tuple[int, int]:
    """Release (`mode` release) or drop the selection; (selected, done)."""
    ids = [h.observer_id for h in held_actions(port, sel)]
    if not ids:
        return 0, 0
    done = port.release(sel.flow, ids, at) if mode == "release" else port.drop(sel.flow, ids, at)
    return len(ids), done


def view(h: HeldAction) -> dict[str, Any]:
    """A held action as the CLI's JSON and the ops API show it."""
    return {
        "observer_id": h.observer_id,
        "flow": h.flow,
        "key": h.key,
        "action": h.action,
        "category": h.category,
        "reason": h.reason,
        "incident": h.incident,
        "deviation": {"kind": h.kind, "step": h.step, "at": format_time(h.at)},
        "version": h.version,
        "held_at": format_time(h.held_at),
    }


def describe_guard(port: HeldActions, flow: str) -> dict[str, Any]:
    """A flow's guardrails now: paused or not, open incidents, held actions by action."""
    state = GuardState.from_bytes(port.guard_state(flow))
    paused = port.paused()
    reason = paused.get(flow, paused.get("*"))
    by_action: dict[str, int] = {}
    for h in held_actions(port, Selection(flow)):
        by_action[h.action] = by_action.get(h.action, 0) + 1
    return {
        "flow": flow,
        "paused": reason is not None,
        "paused_reason": reason,
        "incidents": [
            {
                "id": inc.id,
                "deviation": kind,
                "step": step,
                "opened_at": format_time(inc.opened),
                "last_at": format_time(inc.last),
                "count": inc.count,
            }
            for (kind, step), inc in sorted(state.open.items(), key=lambda kv: kv[1].opened)
        ],
        "decided_up_to": None if state.upto is None else format_time(state.upto),
        "held": by_action,
    }


def ids_of(values: Sequence[str]) -> tuple[str, ...]:
    """Observer-ids given as repeated options or comma-separated."""
    return tuple(v for raw in values for v in raw.split(",") if v)
