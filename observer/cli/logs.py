"""Logging for the command line: one line per record, context from `extra=` appended, and
control characters escaped (keys, ids and types come from producers)."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

__all__ = ["ContextFormatter", "configure_logging", "escape_controls"]

_CONTEXT = ("flow", "key", "topic", "partition", "offset", "observer_id")

# Control characters (C0, DEL, C1, and the Unicode line and paragraph separators) as escapes:
# keys, ids and types come from producers, and a CR/LF in one must not forge a log line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
_TRACEBACK_ESCAPES = {c: e for c, e in _ESCAPES.items() if c != ord("\n")}


def escape_controls(text: str) -> str:
    """`text` with control characters written as escapes (`\\n`, `\\x1b`, ...): one line."""
    return text.translate(_ESCAPES)


class ContextFormatter(logging.Formatter):
    """Appends the context passed with `extra=` (flow, key, topic, partition, offset, ...).

    The message and the context are escaped (`escape_controls`); a traceback keeps its lines
    but no other control character."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = escape_controls(record.getMessage()), None
        text = super().format(safe)
        ctx = [
            f"{name}={escape_controls(str(getattr(record, name)))}"
            for name in _CONTEXT
            if getattr(record, name, None) is not None
        ]
        return f"{text} [{' '.join(ctx)}]" if ctx else text

    def formatException(self, ei: Any) -> str:
        if ei[1] is None:
            return super().formatException(ei)
        text = "".join(_traceback_lines(traceback.TracebackException(*ei)))
        return text.rstrip("\n")

    def formatStack(self, stack_info: str) -> str:
        return super().formatStack(stack_info).translate(_TRACEBACK_ESCAPES)


def _traceback_lines(te: traceback.TracebackException) -> list[str]:
    """A traceback as Python prints it, but with each exception's own text (which may quote
    data) escaped to one line; the frames come from the code and keep their lines."""
    lines: list[str] = []
    if te.__cause__ is not None:
        lines += _traceback_lines(te.__cause__)
        lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif te.__context__ is not None and not te.__suppress_context__:
        lines += _traceback_lines(te.__context__)
        lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if te.stack:
        lines.append("Traceback (most recent call last):\n")
        lines += [line.translate(_TRACEBACK_ESCAPES) for line in te.stack.format()]
    lines += [escape_controls(line.rstrip("\n")) + "\n" for line in te.format_exception_only()]
    return lines


def configure_logging(level: str) -> None:
    """One stderr handler for the whole process at `level` (INFO, DEBUG, ...)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
