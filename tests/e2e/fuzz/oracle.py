"""The oracle: what the contract (docs/flow-language.md, "Bad input" and "Dead letters") says
the observer must do with a record of the fuzzed topic: dead-letter it, apply it, or ignore
it. Written from the contract, not by calling observer code."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "ACCOUNT_TYPES",
    "MAX_DEPTH",
    "MAX_TIME",
    "MIN_TIME",
    "ORDER_TYPES",
    "Bad",
    "Verdict",
    "event_time",
    "oracle",
    "strict_json",
]

ORDER_TYPES = ("OrderPlaced", "PaymentCaptured", "Shipped")
ACCOUNT_TYPES = ("AccountOpened", "AccountClosed")


# JSON as RFC 8259 defines it, read strictly: UTF-8 text (no BOM, no invalid or surrogate
# sequences), no NaN/Infinity, no trailing content, strings that are Unicode (an escaped lone
# surrogate is not). Two implementation limits any decoder has (RFC 8259 section 9), chosen
# far from what the generator produces near them: nesting deeper than 1024, and numbers that
# overflow a double.
MAX_DEPTH = 1024
# An event time has to name an instant the observer can show (it renders times as ISO-8601,
# deadlines included): docs/flow-language.md says years 1 to 9000. The generator stays far from
# both ends.
MIN_TIME = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_TIME = 221_845_391_999_999  # 8999-12-31T23:59:59.999Z
OUT_OF_RANGE = "out of range"
_DIGITS = re.compile(r"-?[0-9]+")
_ISO = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"(?:[Tt ](?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<f>[0-9]+))?)?"
    r"(?P<z>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_WS = " \t\n\r"


class Bad(Exception):
    """The oracle's verdict for a record that must be dead-lettered."""


_MISSING = object()


def _json_depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise Bad(f"{name} is not JSON")


def _finite(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise Bad(f"number {text[:20]} overflows")
    return f


def _unicode_only(node: Any) -> None:
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            raise Bad("string is not Unicode (lone surrogate)") from None
    elif isinstance(node, list):
        for v in node:
            _unicode_only(v)
    elif isinstance(node, dict):
        for k, v in node.items():
            _unicode_only(k)
            _unicode_only(v)


def strict_json(raw: bytes | None) -> Any:
    if raw is None:
        raise Bad("no value")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Bad("not UTF-8") from None
    if _json_depth(text) > MAX_DEPTH:
        raise Bad("nested too deep")
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise Bad(f"not JSON: {exc}") from None
    _unicode_only(doc)
    return doc


def _iso_ms(text: str) -> int | None:
    m = _ISO.fullmatch(text)
    if m is None:
        return None
    g = m.groupdict()
    frac = (g["f"] or "0")[:6].ljust(6, "0")
    try:
        dt = datetime(
            int(g["y"]),
            int(g["mo"]),
            int(g["d"]),
            int(g["h"] or 0),
            int(g["mi"] or 0),
            int(g["s"] or 0),
            int(frac),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    z = g["z"]
    if z and z not in "Zz":
        sign = -1 if z[0] == "-" else 1
        digits = z[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:
            return None
        dt -= sign * timedelta(hours=hours, minutes=minutes)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def event_time(raw: Any) -> int:
    """Epoch ms (a JSON number or a string of ASCII digits) or ISO-8601 text, else Bad."""
    if raw is _MISSING:
        raise Bad("no event time")
    if raw is None or isinstance(raw, bool | list | dict):
        raise Bad(f"event time {raw!r:.40} is not a time")
    if isinstance(raw, int | float):
        ms = int(raw)
    elif isinstance(raw, str):
        s = raw.strip(_WS)
        if _DIGITS.fullmatch(s):
            ms = int(s)
        else:
            iso = _iso_ms(s)
            if iso is None:
                raise Bad(f"event time {raw!r:.40} is neither epoch ms nor ISO-8601")
            ms = iso
    else:  # pragma: no cover - JSON has no other types
        raise Bad("event time of an unknown type")
    if not MIN_TIME <= ms <= MAX_TIME:
        raise Bad(f"event time {raw!r:.40} is {OUT_OF_RANGE}")
    return ms


def _field(doc: Any, name: str) -> Any:
    return doc.get(name, _MISSING) if isinstance(doc, dict) else _MISSING


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "dead_letter" | "applied" | "ignored" (as in observer_events_total)
    why: str


def oracle(key: bytes | None, value: bytes | None) -> Verdict:
    """What the contract says the observer must do with a record of the fuzzed topic."""
    try:
        doc = strict_json(value)
        etype = _field(doc, "type")
        if etype is _MISSING or etype is None or etype == "" or isinstance(etype, list | dict):
            raise Bad("no event type")
        if etype in ORDER_TYPES:
            okey = _field(doc, "order_id")
            if (
                okey is _MISSING
                or okey is None
                or okey == ""
                or isinstance(okey, bool | list | dict)
            ):
                raise Bad("no correlation key")
            event_time(_field(doc, "occurred_at"))
            return Verdict("applied", "order event")
        if etype in ACCOUNT_TYPES:
            if key is None or key == b"":
                raise Bad("no correlation key (record key)")
            try:
                key.decode("utf-8")
            except UnicodeDecodeError:
                raise Bad("record key is not UTF-8") from None
            return Verdict("applied", "account event")
        return Verdict("ignored", f"type {etype!r:.40} matches no flow")
    except Bad as bad:
        return Verdict("dead_letter", str(bad))
