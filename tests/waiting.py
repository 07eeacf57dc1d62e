"""Waiting in tests for what is expected, with a bound (never a fixed sleep before a check)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["wait_until"]


def wait_until(
    what: Callable[[], T],
    timeout: float,
    message: str,
    *,
    interval: float = 0.2,
    required: bool = True,
) -> T:
    """Call `what` until it returns something truthy and return that. After `timeout`
    seconds: an AssertionError naming `message`, or (`required=False`) the last falsy value."""
    deadline = time.monotonic() + timeout
    while not (got := what()):
        if time.monotonic() >= deadline:
            if required:
                raise AssertionError(f"timed out ({timeout} s) waiting for {message}")
            return got
        time.sleep(interval)
    return got
