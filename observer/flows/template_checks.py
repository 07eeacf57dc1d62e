"""What `observer validate` checks in a template's shape, besides the names it uses: nothing
that would always break a limit of `limits.py` at run time gets deployed.

- statements flow templates do not support (macros, call blocks, includes, recursive loops);
- nesting deeper than MAX_TEMPLATE_DEPTH;
- calls of methods no value has (`METHODS`);
- constant expressions evaluated with the run-time bounds (`7 ** (10**8)`, `'a' * 10**8`,
  `range(100000)` are reported here, never folded by Jinja);
- loops over constants nested so that they run more than MAX_LOOP_ITERATIONS times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jinja2 import nodes

from observer.errors import TemplateLimitError
from observer.flows import bounds
from observer.flows.sandbox import METHODS
from observer.limits import MAX_LOOP_ITERATIONS, MAX_RENDERED_SIZE, MAX_TEMPLATE_DEPTH

__all__ = ["shape_problems"]

_UNKNOWN: Any = object()
_UNSUPPORTED: dict[type[nodes.Node], str] = {
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
    nodes.Block: "{% block %}",
}


def _depth(ast: nodes.Node) -> int:
    deepest = 0
    stack: list[tuple[nodes.Node, int]] = [(ast, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return deepest


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.iterations = 0

    def report(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def statement(self, node: nodes.Node, times: int) -> None:
        """Check a statement and what it holds; `times`: how often loops around it run it."""
        kind = _UNSUPPORTED.get(type(node))
        if kind is not None:
            self.report(f"{kind} is not available in flow templates")
            return
        if isinstance(node, nodes.For):
            if node.recursive:
                self.report("recursive loops are not available in flow templates")
            items = self.fold(node.iter)
            size = len(items) if isinstance(items, list | tuple | str | range | dict) else 0
            self.iterations += times * size
            if self.iterations > MAX_LOOP_ITERATIONS:
                self.report(f"its loops run more than {MAX_LOOP_ITERATIONS} times in one rendering")
            if node.test is not None:
                self.fold(node.test)
            for child in (*node.body, *node.else_):
                self.statement(child, times * max(size, 1))
            return
        for child in node.iter_child_nodes():
            if isinstance(child, nodes.Expr):
                self.fold(child)
            else:
                self.statement(child, times)

    def fold(self, node: nodes.Node) -> Any:
        """The value of a constant expression, evaluated with the run-time bounds (reporting
        what breaks them), or _UNKNOWN; every subexpression is checked either way."""
        if isinstance(node, nodes.Call):
            self._call(node)
            if _is_range(node):
                args = [self.fold(a) for a in node.args]
                return self._guard(bounds.bounded_range, *args)
        children = [self.fold(c) for c in node.iter_child_nodes()]
        if isinstance(node, nodes.Const):
            return node.value
        if isinstance(node, nodes.List):
            return self._guard(list, children)
        if isinstance(node, nodes.Tuple):
            return self._guard(tuple, children)
        if isinstance(node, nodes.BinExpr):
            return self._guard(bounds.binop, node.operator, *children)
        if isinstance(node, nodes.Neg | nodes.Pos):
            return self._guard(bounds.unop, node.operator, *children)
        if isinstance(node, nodes.Concat):
            return self._guard(_concat, *children)
        return _UNKNOWN

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` when every argument is known; a limit it breaks is reported."""
        if any(a is _UNKNOWN or _holds_unknown(a) for a in args):
            return _UNKNOWN
        try:
            return fn(*args)
        except TemplateLimitError as exc:
            self.report(str(exc))
        except Exception:  # depends on the data, or fails the same way at run time
            pass
        return _UNKNOWN

    def _call(self, node: nodes.Call) -> None:
        callee = node.node
        if isinstance(callee, nodes.Getattr) and callee.attr not in METHODS:
            self.report(
                f"it calls .{callee.attr}(), which no value in a flow template has "
                "(see 'Templates' in docs/flow-language.md)"
            )


def _holds_unknown(value: Any) -> bool:
    return isinstance(value, list) and any(v is _UNKNOWN for v in value)


def _is_range(node: nodes.Call) -> bool:
    return (
        isinstance(node.node, nodes.Name)
        and node.node.name == "range"
        and not node.kwargs
        and node.dyn_args is None
        and node.dyn_kwargs is None
    )


def _concat(*parts: Any) -> str:
    if sum(bounds.measure(p) for p in parts) > MAX_RENDERED_SIZE:
        raise TemplateLimitError(f"'~' would make more than {MAX_RENDERED_SIZE} characters")
    return "".join(str(p) for p in parts)


def shape_problems(ast: nodes.Template) -> list[str]:
    """Problems of a parsed template's shape, in plain words (empty when fine)."""
    depth = _depth(ast)
    if depth > MAX_TEMPLATE_DEPTH:
        return [f"it nests more than {MAX_TEMPLATE_DEPTH} deep"]
    checker = _Checker()
    with bounds.rendering():
        for child in ast.body:
            checker.statement(child, 1)
    return checker.problems
