"""Selectors (`value.a.b`, `value.items.0.sku`, `header.NAME`, `key`, `timestamp`) compiled to
plain functions over a decoded record, so the hot path does no parsing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MISSING", "RecordView", "Selector", "compile_selector"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
"""What a selector returns when the record has no such field."""


@dataclass(slots=True)
class RecordView:
    """The parts of a Kafka record a selector can see. `headers` values are raw bytes or str."""

    value: Any
    headers: Mapping[str, Any]
    key: Any
    timestamp: int


Selector = Callable[[RecordView], Any]


def _step(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(part, MISSING)
    if isinstance(node, list) and part.lstrip("-").isdigit():
        i = int(part)
        return node[i] if -len(node) <= i < len(node) else MISSING
    return MISSING


def _text(raw: Any) -> Any:
    if type(raw) is bytes:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return MISSING
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return MISSING
    return raw


def compile_selector(text: str) -> Selector:
    """Compile a validated selector into a function `RecordView -> value | MISSING`.

    The functions test `type(node) is dict` first: decoded JSON is plain dicts, and that test
    is much cheaper than `isinstance(node, Mapping)` (which `_step` does for anything else)."""
    if text == "key":
        return lambda r: MISSING if r.key is None else _text(r.key)
    if text == "timestamp":
        return lambda r: r.timestamp
    if text.startswith("header."):
        name = text[len("header.") :]
        return lambda r: _text(r.headers.get(name, MISSING)) if r.headers else MISSING
    parts = text.split(".")[1:]
    if not parts:
        return lambda r: r.value
    if len(parts) == 1:
        (p0,) = parts

        def one(r: RecordView) -> Any:
            v = r.value
            return v.get(p0, MISSING) if type(v) is dict else _step(v, p0)

        return one
    if len(parts) == 2:
        p0, p1 = parts

        def two(r: RecordView) -> Any:
            v = r.value
            v = v.get(p0, MISSING) if type(v) is dict else _step(v, p0)
            return v.get(p1, MISSING) if type(v) is dict else _step(v, p1)

        return two

    def deep(r: RecordView) -> Any:
        node = r.value
        for part in parts:
            node = node.get(part, MISSING) if type(node) is dict else _step(node, part)
            if node is MISSING:
                return MISSING
        return node

    return deep
