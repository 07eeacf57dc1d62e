"""JSON with integers of any size read exactly, for the few places that need it.

orjson (the hot path's decoder) reads an integer beyond 64 bits as the nearest double: 10^30 and
10^30 + 1 both become 1e30. Where that could merge two different correlation keys or event ids,
the record is read again with the standard library, which keeps every integer exact. orjson
accepts exactly the integers in [INT_MIN, INT_MAX]; anything else it returns is a float.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

__all__ = ["INT_MAX", "INT_MIN", "dumps", "loads", "loads_exact", "may_be_rounded"]

INT_MIN, INT_MAX = -(2**63), 2**64 - 1
"""The integers orjson reads and writes as integers."""

# An integer literal orjson may have rounded has at least 19 digits (-9223372036854775809).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def may_be_rounded(value: Any) -> bool:
    """True if `value`, as orjson decoded it, may be an integer literal it rounded to a float."""
    return type(value) is float and not INT_MIN < value <= INT_MAX  # -2**63 may be rounded


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_exact(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON keeping integers of any size exact (NaN and Infinity refused, as orjson does).
    Slower than orjson: for records orjson already accepted, when exactness matters."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    return json.loads(data, parse_constant=_no_constant)


def loads(data: bytes | str) -> Any:
    """Decode JSON with orjson, again exactly when it holds an integer literal orjson may round.
    Raises orjson.JSONDecodeError (a ValueError) on invalid JSON."""
    obj = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else data
    if _LONG_DIGITS.search(raw) is not None:
        return loads_exact(raw)
    return obj


def dumps(obj: Any) -> bytes:
    """orjson's compact JSON; integers beyond 64 bits (which orjson refuses) written exactly."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
