"""Where a flow's open instances wait, counted from their stored states (pure).

An open instance waits at a step of its current path that it has not observed and whose window
has started (every anchor observed, or the path entered); it is overdue there when the step's
deadline is past. Counting needs every open instance's state: the Redis adapter
(`adapters/redis/console.py`) reads a flow's buckets, at most once every few seconds for the
whole group, and stores the result for every process to serve (docs/console.md: the cost).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from observer.engine.codec import decode_slot
from observer.engine.core import Engine, VersionUnavailable
from observer.engine.timers import anchor_time, deadline
from observer.timefmt import format_time

__all__ = ["SAMPLE", "count_waiting"]

SAMPLE = 200  # instances listed per step (the most overdue first)

_NEVER = 1 << 62


def count_waiting(
    engine: Engine,
    flow: str,
    slots: Iterable[tuple[str, bytes]],
    now: int,
    *,
    sample: int = SAMPLE,
    partial: bool = False,
) -> dict[str, Any]:
    """`slots`: (key, state) of the flow's slots. The result, JSON-ready: per version its
    open instances and, per step, how many wait there, how many of those are overdue, and up
    to `sample` of them (earliest deadline first: the most overdue lead)."""
    versions: dict[int, dict[str, Any]] = {}
    waits: dict[tuple[int, str], list[tuple[int, str]]] = {}
    counted = unreadable = 0
    for key, state in slots:
        counted += 1
        try:
            slot = decode_slot(flow, key, state)
            inst = slot.instance
            if inst is None or not inst.open:
                continue
            compiled = engine.flow_of(slot)
        except (ValueError, VersionUnavailable):
            unreadable += 1
            continue
        row = versions.setdefault(inst.version, {"open": 0, "steps": {}})
        row["open"] += 1
        for i in compiled.paths[inst.path].steps:
            step = compiled.steps[i]
            if i in inst.observed or anchor_time(inst, step) is None:
                continue
            due = deadline(inst, step)
            cell = row["steps"].setdefault(step.name, {"waiting": 0, "overdue": 0})
            cell["waiting"] += 1
            if due is not None and due < now:
                cell["overdue"] += 1
            waits.setdefault((inst.version, step.name), []).append(
                (_NEVER if due is None else due, key)
            )
    for (version, name), entries in waits.items():
        cell = versions[version]["steps"][name]
        cell["instances"] = [
            {
                "key": key,
                "deadline": None if due == _NEVER else format_time(due),
                "overdue": due < now,
            }
            for due, key in heapq.nsmallest(sample, entries)
        ]
    return {
        "flow": flow,
        "computed_at": format_time(now),
        "computed_at_ms": now,
        "slots_read": counted,
        "unreadable": unreadable,
        "partial": partial,
        "versions": {str(v): row for v, row in sorted(versions.items())},
    }
