"""The arithmetic of template limits: measuring values, the work budget of one rendering, and
the operators and string operations that could build something huge, checked before they run.

Pure functions over plain values, used by the sandbox (`observer/flows/sandbox.py`) while
rendering and by the validator (`observer/flows/template_checks.py`) on constants. Every
failure is a `TemplateLimitError` with a short message; the limits are in `limits.py`.
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from jinja2.runtime import Undefined
from jinja2.utils import Cycler, Joiner, Namespace

from observer.errors import TemplateLimitError
from observer.limits import (
    MAX_FORMAT_WIDTH,
    MAX_LOOP_ITERATIONS,
    MAX_RENDER_WORK,
    MAX_RENDERED_SIZE,
    MAX_TEMPLATE_INT,
    MIN_TEMPLATE_INT,
)

__all__ = [
    "BINOPS",
    "UNOPS",
    "binop",
    "bounded_range",
    "check_format_spec",
    "check_join",
    "check_printf",
    "check_replace",
    "check_width",
    "checked",
    "count_iteration",
    "describe",
    "measure",
    "rendering",
    "spend",
    "unop",
]

BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
UNOPS: dict[str, Callable[[Any], Any]] = {"+": operator.pos, "-": operator.neg}

_SEQUENCE = (str, list, tuple)
_WALKED = (Namespace, Cycler, Joiner)  # Jinja objects that hold values in their __dict__


def describe(value: Any) -> str:
    """A value for a message: short, never the text of a huge integer or string."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        bits = value.bit_length()
        return repr(value) if bits <= 64 else f"a {bits}-bit integer"
    if isinstance(value, str):
        return repr(value) if len(value) <= 24 else f"a string of {len(value)} characters"
    if isinstance(value, list | tuple | Mapping):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, Undefined):
        return "undefined"
    return f"a {type(value).__name__}"


def _items(v: Any) -> Any:
    """The parts of a container `measure` counts (None for anything else)."""
    kind = type(v)
    if kind is list or kind is tuple:
        return v
    if kind is dict or isinstance(v, Mapping):
        return (*v.keys(), *v.values())
    if isinstance(v, list | tuple | set | frozenset):
        return v
    if isinstance(v, _WALKED):
        return tuple(vars(v).values())
    return None


_PLAIN_SCALARS = frozenset({int, float, bool, type(None)})


def _scalar(v: Any) -> int:
    if isinstance(v, str | range):
        return len(v)
    return 1


def measure(value: Any, limit: int = MAX_RENDERED_SIZE) -> int:
    """How big `value` is when written out: characters of strings, one per number and per item
    of a list or mapping, every reference counted again (a list repeating one string a million
    times is as big as the text it renders). Raises TemplateLimitError beyond `limit`.

    Each distinct container is walked once (sizes of shared parts are remembered, for the
    whole rendering), and the walk gives up after `limit` items: at most about `limit` steps,
    whatever the value."""
    if type(value) is str:
        size = len(value)
    else:
        top = _items(value)
        if top is None:
            size = _scalar(value)
        else:
            budget = _BUDGET.get()
            cache = None if budget is None else budget.sizes
            size = _measure_containers(value, top, limit, cache)
    if size > limit:
        raise TemplateLimitError(f"a value larger than {limit} characters or items")
    return size


_Cache = dict[int, tuple[Any, int]]


def _measure_containers(value: Any, top: Any, limit: int, cache: _Cache | None) -> int:
    """Depth-first, each distinct container once; a container inside itself counts 1 there.
    Sizes go to `cache` (the rendering's, keyed by id, holding the value so the id stays its
    own) unless the value holds a namespace, whose size can change."""
    sizes: dict[int, int] = {}
    if cache is not None:
        hit = cache.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
    parts: dict[int, Any] = {id(value): top}
    objects: dict[int, Any] = {id(value): value}
    open_: set[int] = set()  # containers whose parts are being measured (the current path)
    stack: list[tuple[Any, bool]] = [(value, False)]
    steps = 0
    mutable = False
    while stack:
        v, expanded = stack.pop()
        key = id(v)
        if key in sizes:
            continue
        items = parts[key]
        if not expanded:
            steps += 1 + len(items)
            if steps > limit:
                raise TemplateLimitError(f"a value larger than {limit} characters or items")
            open_.add(key)
            stack.append((v, True))
            mutable = mutable or isinstance(v, _WALKED)
            for item in items:
                kind = type(item)
                if kind is str or kind in _PLAIN_SCALARS:
                    continue
                k = id(item)
                if k in sizes or k in open_:
                    continue
                if cache is not None:
                    hit = cache.get(k)
                    if hit is not None and hit[0] is item:
                        sizes[k] = hit[1]
                        continue
                sub = _items(item)
                if sub is not None:
                    parts[k] = sub
                    objects[k] = item
                    stack.append((item, False))
            continue
        total = 1 + len(items)
        for item in items:
            kind = type(item)
            if kind is str:
                total += len(item)
            elif kind in _PLAIN_SCALARS:
                total += 1
            else:
                done = sizes.get(id(item))
                total += _scalar(item) if done is None else done
        if total > limit:
            raise TemplateLimitError(f"a value larger than {limit} characters or items")
        sizes[key] = total
        open_.discard(key)
    if cache is not None and not mutable:
        for k, obj in objects.items():
            cache[k] = (obj, sizes[k])
    size: int = sizes[id(value)]
    return size


# -- the budget of one rendering ----------------------------------------------------------------


class _Budget:
    __slots__ = ("loops", "sizes", "work")

    def __init__(self) -> None:
        self.work = MAX_RENDER_WORK
        self.loops = MAX_LOOP_ITERATIONS
        self.sizes: _Cache = {}  # sizes of the containers measured while rendering


_BUDGET: ContextVar[_Budget | None] = ContextVar("observer_template_budget", default=None)


@contextmanager
def rendering() -> Iterator[None]:
    """A fresh budget for the rendering inside the block (outside one, nothing is counted)."""
    token = _BUDGET.set(_Budget())
    try:
        yield
    finally:
        _BUDGET.reset(token)


def spend(units: int) -> None:
    """Count `units` of work against the current rendering's budget."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.work -= units
        if budget.work < 0:
            raise TemplateLimitError(
                f"the template does more than {MAX_RENDER_WORK} units of work (characters and "
                "items its operations produce or read)"
            )


def count_iteration() -> None:
    """Count one loop iteration against the current rendering's budget."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.loops -= 1
        if budget.loops < 0:
            raise TemplateLimitError(
                f"loops run more than {MAX_LOOP_ITERATIONS} times in one rendering"
            )


def checked(result: Any, what: Callable[[], str]) -> Any:
    """`result` of an operation, after checking it fits: an integer in 64 bits, a string or
    collection within MAX_RENDERED_SIZE (and counted as work)."""
    kind = type(result)
    if kind is int:
        if not MIN_TEMPLATE_INT <= result <= MAX_TEMPLATE_INT:
            raise TemplateLimitError(f"{what()} gives an integer beyond 64 bits")
    elif kind is str or isinstance(result, str | list | tuple | Mapping | range):
        spend(measure(result))
    return result


# -- operators ----------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(op: str, left: Any, right: Any) -> None:
    if op == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCE) and isinstance(times, int):
                size = measure(seq) * max(times, 0)
                if size > MAX_RENDERED_SIZE:
                    raise TemplateLimitError(
                        f"{describe(seq)} * {describe(times)} would be larger than "
                        f"{MAX_RENDERED_SIZE} characters or items"
                    )
    elif op == "**":
        if _is_int(left) and _is_int(right) and right > 63 and abs(left) > 1:
            raise TemplateLimitError(f"{describe(left)} ** {describe(right)} is beyond 64 bits")
    elif op == "+" and isinstance(left, _SEQUENCE) and isinstance(right, _SEQUENCE):
        if measure(left) + measure(right) > MAX_RENDERED_SIZE:
            raise TemplateLimitError(
                f"{describe(left)} + {describe(right)} would be larger than "
                f"{MAX_RENDERED_SIZE} characters or items"
            )
    elif op == "%" and isinstance(left, str):
        check_printf(left)
        measure(right)


def binop(op: str, left: Any, right: Any) -> Any:
    """`left op right`, refused before it runs when its result would be too big."""
    if not isinstance(left, Undefined) and not isinstance(right, Undefined):
        _check_binop(op, left, right)
    return checked(BINOPS[op](left, right), lambda: f"{describe(left)} {op} {describe(right)}")


def unop(op: str, value: Any) -> Any:
    """`op value` (unary + or -), its result checked like an operator's."""
    return checked(UNOPS[op](value), lambda: f"{op}{describe(value)}")


def bounded_range(*args: Any) -> range:
    """`range(...)` of at most MAX_LOOP_ITERATIONS numbers."""
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = MAX_LOOP_ITERATIONS + 1
    if size > MAX_LOOP_ITERATIONS:
        raise TemplateLimitError(
            f"range({', '.join(describe(a) for a in args)}) has more than "
            f"{MAX_LOOP_ITERATIONS} numbers"
        )
    return numbers


# -- string operations that can amplify -------------------------------------------------------

_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?", re.S)
_DIGITS = re.compile(r"\d+")


def _number_at_most(text: str, limit: int, what: str) -> None:
    if len(text) > len(str(limit)) or int(text) > limit:
        raise TemplateLimitError(f"{what} {describe(text)} is more than {limit}")


def check_printf(fmt: str) -> None:
    """Refuse `%` formatting whose widths or precisions exceed MAX_FORMAT_WIDTH (or come from
    the arguments, `%*d`)."""
    for m in _PRINTF.finditer(fmt):
        for part in m.groups():
            if part == "*":
                raise TemplateLimitError("'*' widths are not allowed in % formatting")
            if part:
                _number_at_most(part, MAX_FORMAT_WIDTH, "a % format width")


def check_format_spec(fmt: str) -> None:
    """The same for `str.format`: widths within MAX_FORMAT_WIDTH, none taken from arguments."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format reports it
    for _literal, _field, spec, _conversion in fields:
        if not spec:
            continue
        if "{" in spec:
            raise TemplateLimitError("nested '{}' in a format spec are not allowed")
        for digits in _DIGITS.findall(spec):
            _number_at_most(digits, MAX_FORMAT_WIDTH, "a format width")


def check_width(width: Any, limit: int = MAX_RENDERED_SIZE) -> None:
    """A padding width (`center`, `ljust`, `zfill`, ...) of at most `limit`."""
    if _is_int(width) and width > limit:
        raise TemplateLimitError(f"a width of {describe(width)} is more than {limit}")


def check_replace(text: Any, old: Any, new: Any, count: Any = -1) -> None:
    """Refuse a replace whose result would exceed MAX_RENDERED_SIZE."""
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    times = text.count(old) if old else len(text) + 1
    if _is_int(count) and count >= 0:
        times = min(times, count)
    if len(text) + times * (len(new) - len(old)) > MAX_RENDERED_SIZE:
        raise TemplateLimitError(
            f"replacing {describe(old)} by {describe(new)} {times} times would be larger than "
            f"{MAX_RENDERED_SIZE} characters"
        )


def check_join(items: Any, separator: Any) -> list[Any]:
    """The items of a join as a list, refused when the joined text would be too big."""
    listed = list(items)
    sep = len(separator) if isinstance(separator, str) else 0
    if measure(listed) + sep * len(listed) > MAX_RENDERED_SIZE:
        raise TemplateLimitError(
            f"joining {len(listed)} items would be larger than {MAX_RENDERED_SIZE} characters"
        )
    return listed
