"""Issue 12: keys, ids and types come from producers; a CR/LF in one never forges a log line."""

from __future__ import annotations

import io
import logging

from observer.cli.logs import ContextFormatter as _ContextFormatter
from observer.cli.logs import escape_controls


def logged(emit: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_ContextFormatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("test_log_format")
    log.handlers[:] = [handler]
    log.propagate = False
    assert callable(emit)
    emit(log)
    return stream.getvalue()


def test_message_and_context_are_one_line() -> None:
    text = logged(
        lambda log: log.warning(
            "processing %s %s failed",
            "Paid\r\n2026-01-01 ERROR forged",
            "e\x1b[31m1",
            extra={"flow": "shop", "key": "o-1\nINFO forged\u2028x", "offset": 7},
        )
    )
    assert text.count("\n") == 1
    assert "Paid\\r\\n2026-01-01 ERROR forged" in text and "e\\x1b[31m1" in text
    assert "key=o-1\\nINFO forged\\u2028x" in text and "offset=7" in text


def test_a_traceback_keeps_its_frames_but_not_the_data_in_its_message() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError("bad key 'k\nERROR forged'")
        except ValueError:
            log.exception("failed on %s", "k\r")

    text = logged(emit)
    lines = text.splitlines()
    assert lines[0] == "ERROR test_log_format: failed on k\\r"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad key 'k\\nERROR forged'"
    assert not any(line.startswith("ERROR forged") for line in lines)


def test_escape_controls_leaves_printable_text_alone() -> None:
    assert escape_controls('café ✓ \\ "q"') == 'café ✓ \\ "q"'
    assert escape_controls("\x00\x7f\x85\t") == "\\x00\\x7f\\x85\\t"
