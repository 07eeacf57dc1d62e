"""The bounded Jinja environment flow templates are compiled in and rendered by.

Jinja's sandbox keeps a template away from Python's internals, not from exhausting memory or
CPU: it folds `{{ 7 ** (10**8) }}` while compiling, `'a' * 10**8` allocates 100 MB, and two
nested loops over `range(100000)` run 10^10 times. Here everything that can build or walk a big
value goes through `observer/flows/bounds.py` first:

- every arithmetic operator is intercepted (so never folded while compiling) and checked;
- `bound_template` rewrites `~`, comparisons, list/tuple/dict literals and loop iterables into
  hidden filters that measure operands and count iterations;
- every filter and test measures what it reads and returns; the few that can amplify (`center`,
  `indent`, `replace`, `join`, `format`, `batch`, ...) check their arguments before running;
- calls are limited to `range` (bounded), `dict`, `namespace`, `cycler`, `joiner` and a list of
  methods (`METHODS`); lists and dicts cannot be changed (captured data is shared with state);
- what is output is measured too. Work is counted per rendering (`bounds.rendering`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from jinja2 import ChainableUndefined, nodes, pass_context
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace, _PassArg

from observer.errors import RenderError, TemplateLimitError
from observer.flows import bounds
from observer.flows.bounds import (
    check_format_spec,
    check_join,
    check_printf,
    check_replace,
    check_width,
    checked,
    count_iteration,
    describe,
    measure,
    spend,
)
from observer.limits import (
    MAX_FORMAT_WIDTH,
    MAX_JSON_INDENT,
    MAX_LOOP_ITERATIONS,
    MAX_RENDERED_SIZE,
)

__all__ = ["GLOBALS", "METHODS", "BoundedEnvironment", "bound_template"]

GLOBALS = ("range", "dict", "namespace", "cycler", "joiner")

_STR_METHODS = frozenset(
    """capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit
    isidentifier islower isnumeric isprintable isspace istitle isupper lower lstrip partition
    removeprefix removesuffix rfind rindex rpartition rsplit rstrip split splitlines startswith
    strip swapcase title upper striptags unescape center ljust rjust zfill replace join format
    format_map""".split()  # noqa: SIM905
)
_METHODS_OF: tuple[tuple[type | tuple[type, ...], frozenset[str]], ...] = (
    (str, _STR_METHODS),
    ((list, tuple), frozenset({"count", "index"})),
    (int, frozenset({"bit_length"})),
    (float, frozenset({"is_integer"})),
    (LoopContext, frozenset({"cycle", "changed"})),
    (Cycler, frozenset({"next", "reset"})),
)
METHODS = frozenset().union(*(names for _, names in _METHODS_OF))
"""Every method a template may call, whatever it is called on."""

_CALLABLE = (dict, Namespace, Cycler, Joiner, bounds.bounded_range)


# -- argument checks of the filters and methods that can amplify ---------------------------------


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _text_size(what: str, size: int) -> None:
    if size > MAX_RENDERED_SIZE:
        raise TemplateLimitError(f"{what} would be larger than {MAX_RENDERED_SIZE} characters")


def _indent(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    width = _arg(args, kwargs, 0, "width", 4)
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    check_width(pad, MAX_FORMAT_WIDTH)
    text = str(value)
    _text_size("indent", len(text) + (text.count("\n") + 1) * max(pad, 0))
    return value


def _wordwrap(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    width = _arg(args, kwargs, 0, "width", 79)
    wrap = _arg(args, kwargs, 2, "wrapstring", None)
    lines = len(str(value)) // max(width, 1) + 1 if isinstance(width, int) else 1
    if isinstance(wrap, str):
        check_width(len(wrap), MAX_FORMAT_WIDTH)
        _text_size("wordwrap", len(str(value)) + lines * len(wrap))
    return value


def _strings_within(limit: int, *names: str) -> Callable[..., Any]:
    def check(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        for given in (*args, *(kwargs.get(n) for n in names)):
            if isinstance(given, str):
                check_width(len(given), limit)
        return value

    return check


def _numeric_start(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    start = _arg(args, kwargs, 1, "start", 0)
    if not isinstance(start, int | float):
        raise RenderError("sum adds numbers only (its start must be a number)")
    return value


def _count_within(name: str) -> Callable[..., Any]:
    def check(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        check_width(_arg(args, kwargs, 0, name, 0), MAX_LOOP_ITERATIONS)
        return value

    return check


def _printf(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    check_printf(str(value))
    return value


def _replace(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    check_replace(str(value), *args[:3])
    return value


def _join(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    return check_join(value, _arg(args, kwargs, 0, "d", ""))


def _width_arg(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    check_width(_arg(args, kwargs, 0, "width", 80))
    return value


def _json_indent(value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    check_width(_arg(args, kwargs, 0, "indent", None), MAX_JSON_INDENT)
    return value


_Check = Callable[[Any, tuple[Any, ...], Mapping[str, Any]], Any]
_FILTER_CHECKS: dict[str, _Check] = {
    "batch": _count_within("linecount"),
    "center": _width_arg,
    "format": _printf,
    "indent": _indent,
    "join": _join,
    "replace": _replace,
    "slice": _count_within("slices"),
    "sum": _numeric_start,
    "tojson": _json_indent,
    "urlize": _strings_within(MAX_FORMAT_WIDTH, "target", "rel"),
    "wordwrap": _wordwrap,
}
_METHOD_CHECKS: dict[str, Callable[..., None]] = {
    "center": lambda s, width=0, *_: check_width(width),
    "ljust": lambda s, width=0, *_: check_width(width),
    "rjust": lambda s, width=0, *_: check_width(width),
    "zfill": lambda s, width=0, *_: check_width(width),
    "replace": check_replace,
    "join": lambda s, items=(), *_: None,  # checked in `call`, which needs the list back
}


# -- filters, tests and the hidden filters `bound_template` inserts ------------------------------


def _bounded(name: str, fn: Callable[..., Any], check: _Check | None) -> Callable[..., Any]:
    """`fn` (a filter or a test), measuring what it reads and returns, never folded at compile
    time (it takes the context)."""
    pass_arg = _PassArg.from_obj(fn)

    @pass_context
    def run(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        units = 1 + (len(value) if type(value) is str else measure(value))
        if args:
            units += measure(args)
        if kwargs:
            units += measure(kwargs)
        spend(units)
        if check is not None:
            value = check(value, args, kwargs)
        if pass_arg is _PassArg.context:
            result = fn(context, value, *args, **kwargs)
        elif pass_arg is _PassArg.eval_context:
            result = fn(context.eval_ctx, value, *args, **kwargs)
        elif pass_arg is _PassArg.environment:
            result = fn(context.environment, value, *args, **kwargs)
        else:
            result = fn(value, *args, **kwargs)
        return checked(result, what)

    what = lambda: f"| {name}"  # noqa: E731 - the message, built only when needed
    return run


@pass_context
def _loop(context: Context, iterable: Any) -> Iterator[Any]:
    for item in iterable:
        count_iteration()
        yield item


@pass_context
def _concat(context: Context, items: list[Any]) -> str:
    size = sum(measure(x) for x in items)
    if size > MAX_RENDERED_SIZE:
        raise TemplateLimitError(f"'~' would make more than {MAX_RENDERED_SIZE} characters")
    spend(size)
    return "".join(str(x) for x in items)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "gteq": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lteq": lambda a, b: a <= b,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


@pass_context
def _compare(context: Context, operands: list[Any], ops: tuple[str, ...]) -> Any:
    spend(sum(measure(x) for x in operands))
    left, result = operands[0], True
    for op, right in zip(ops, operands[1:], strict=True):
        result = _COMPARE[op](left, right)
        if not result:
            return result
        left = right
    return result


@pass_context
def _literal(context: Context, value: Any) -> Any:
    spend(measure(value))
    return value


_HIDDEN = {
    "_observer_loop": _loop,
    "_observer_concat": _concat,
    "_observer_compare": _compare,
    "_observer_literal": _literal,
}


def _filter(node: nodes.Expr, name: str, *args: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(node, name, list(args), [], None, None, lineno=node.lineno)


def bound_template(ast: nodes.Template) -> nodes.Template:
    """Rewrite a parsed template so that `~`, comparisons, literals and loops are measured."""

    def visit(node: nodes.Node) -> nodes.Node:
        for field, old in node.iter_fields():
            if isinstance(old, list):
                setattr(node, field, [visit(n) if isinstance(n, nodes.Node) else n for n in old])
            elif isinstance(old, nodes.Node):
                setattr(node, field, visit(old))
        if isinstance(node, nodes.For):
            node.iter = _filter(cast(nodes.Expr, node.iter), "_observer_loop")
        elif isinstance(node, nodes.Concat):
            return _filter(nodes.List(node.nodes, lineno=node.lineno), "_observer_concat")
        elif isinstance(node, nodes.Compare):
            operands = nodes.List([node.expr, *(op.expr for op in node.ops)], lineno=node.lineno)
            ops = nodes.Const(tuple(op.op for op in node.ops), lineno=node.lineno)
            return _filter(operands, "_observer_compare", ops)
        elif isinstance(node, nodes.List | nodes.Dict) or (
            isinstance(node, nodes.Tuple) and node.ctx == "load"
        ):
            return _filter(node, "_observer_literal")
        return node

    out = visit(ast)
    assert isinstance(out, nodes.Template)
    return out


# -- the environment ----------------------------------------------------------------------------


def _finalize(value: Any) -> Any:
    """What `{{ expr }}` outputs: measured; None as nothing (a null step is no "None")."""
    if value is None:
        return ""
    spend(measure(value))
    return value


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with the bounds of this module. Mapping keys win over methods
    (`value.items` is the field, not `dict.items`), and `.0` on a mapping also finds "0"."""

    intercepted_binops = frozenset(bounds.BINOPS)
    intercepted_unops = frozenset(bounds.UNOPS)

    def __init__(self) -> None:
        super().__init__(undefined=ChainableUndefined, autoescape=False, finalize=_finalize)
        self.globals.clear()
        self.globals.update(
            range=bounds.bounded_range,
            dict=dict,
            namespace=Namespace,
            cycler=Cycler,
            joiner=Joiner,
        )
        self.filters = {
            name: _bounded(name, fn, _FILTER_CHECKS.get(name)) for name, fn in self.filters.items()
        }
        self.filters.update(_HIDDEN)
        tests = cast(dict[str, Callable[..., Any]], self.tests)
        self.tests = {name: _bounded(name, fn, None) for name, fn in tests.items()}

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Mapping) and argument not in obj and str(argument) in obj:
            return obj[str(argument)]
        return super().getitem(obj, argument)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return bounds.binop(operator, left, right)

    def call_unop(self, context: Context, operator: str, arg: Any) -> Any:
        return bounds.unop(operator, arg)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked_format(*args: Any, **kwargs: Any) -> str:
            check_format_spec(fmt)
            return wrapped(*args, **kwargs)

        checked_format.observer_allowed = True  # type: ignore[attr-defined]
        return checked_format

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        spend(1 + measure(args) + measure(kwargs))
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str) and name in _METHOD_CHECKS:
            _METHOD_CHECKS[name](owner, *args, **kwargs)
            if name == "join" and args:
                args = (check_join(args[0], owner), *args[1:])
        elif not _may_call(__obj, owner, name):
            raise RenderError(f"calling {name if name else describe(__obj)}() is not allowed")
        result = super().call(__context, __obj, *args, **kwargs)
        return checked(result, lambda: f"{name}()")


def _may_call(obj: Any, owner: Any, name: str) -> bool:
    if any(obj is c for c in _CALLABLE) or isinstance(obj, Joiner):
        return True
    if getattr(obj, "observer_allowed", False) is True:
        return True
    if owner is None or isinstance(owner, Undefined):
        return False
    return any(isinstance(owner, kind) and name in names for kind, names in _METHODS_OF)
