"""Anchors that form a cycle: a step that (through `after`) waits for itself is never armed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from observer.flows.compiled import CompiledStep

__all__ = ["check_cycles"]


def check_cycles(
    steps: list[CompiledStep],
    loc: tuple[str | int, ...],
    problem: Callable[[Sequence[str | int], str], None],
) -> None:
    """Report (through `problem`) the first cycle found among the anchors of one path's steps."""
    by_index = {s.index: s for s in steps}
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def visit(i: int, trail: list[str]) -> bool:
        if state.get(i) == 2:
            return False
        if state.get(i) == 1:
            cycle = [*trail[trail.index(by_index[i].name) :], by_index[i].name]
            first = steps.index(by_index[i])
            problem((*loc, first, "after"), "anchors form a cycle: " + " -> ".join(cycle))
            return True
        state[i] = 1
        for a in by_index[i].anchors:
            if a in by_index and visit(a, [*trail, by_index[i].name]):
                state[i] = 2
                return True
        state[i] = 2
        return False

    for s in steps:
        visit(s.index, [])
