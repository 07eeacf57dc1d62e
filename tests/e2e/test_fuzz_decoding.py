"""Fuzzed event decoding against one real `observer run` process (issue 5).

A few thousand records -- random bytes, random JSON, events with wrong-typed or missing type,
key and time fields, byte-level mutations of valid events (bit flips, deleted, inserted and
replaced bytes, truncation, splices), escape tricks (lone surrogates, invalid and overlong
UTF-8, control characters, NaN/Infinity, numbers out of range, a BOM), deep nesting, null and
empty keys and values, odd headers -- are generated with hypothesis (derandomized, generate
phase only, so every run produces the same records), interleaved with valid events, and
produced to a source topic of several partitions. One `observer run` reads them all.

Which records are bad is decided here, by a small oracle written from the contract
(/work/shared/spec/flow-language.md, section 2 "Bad input" and section 3 "Dead letters") and not
by calling observer code. The test then checks that the process is alive and healthy, that
every bad record is in the dead-letter topic exactly once with its key, value and headers
unchanged plus the observer's headers, that no good record is, that the observer's own counts of
applied / ignored / dead-lettered records match the oracle's, and that the valid events were
applied (their instances completed with the expected step times, and `/instances` shows them).
Every value of the edge-case menus is also sent once in an otherwise valid event, so none
depends on the random draws.

Event times out of range (beyond 64 bits, or outside years 1..9000) once crashed the observer
or poisoned their key; the last test sends them on purpose. Runs in about 20-30 s.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import ObserverProcess
from tests.integration.kafka_helpers import Record, consume_all

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PARTITIONS = 4
FUZZ_EXAMPLES = 1800  # hypothesis examples: one fuzzed record each, MUTANTS for "mutated"
VALID_ORDERS = 60  # verified instances: 3 events each
VALID_ACCOUNTS = 40  # verified instances: 2 events each

# Event times of the valid events: an hour ago, so no window (1h/2h) closes during the test.
T0 = (time.time_ns() // 1_000_000 // 1000) * 1000 - 3_600_000

# Two flows on one topic, with the same type selector: `fuzz-orders` takes key and time from
# the value and the event id from a header; `fuzz-accounts` uses the source defaults (the Kafka
# record key, the record timestamp, topic/partition/offset).
FLOWS = """
flow: fuzz-orders
version: 1
key: order_id
sources:
  orders:
    topic: SOURCE
    type: value.type
    key: value.order_id
    id: header.event_id
    time: value.occurred_at
steps:
  - step: placed
    on: orders.OrderPlaced
    capture: [value.total]
  - step: paid
    on: orders.PaymentCaptured
    within: 1h
  - step: shipped
    on: orders.Shipped
    within: 2h
retain: 7d  # long enough that the verified instances are still there to look at
---
flow: fuzz-accounts
version: 1
sources:
  accounts:
    topic: SOURCE
    type: value.type
steps:
  - step: opened
    on: accounts.AccountOpened
  - step: closed
    on: accounts.AccountClosed
    within: 1h
retain: 7d  # long enough that the verified instances are still there to look at
"""

ORDER_TYPES = ("OrderPlaced", "PaymentCaptured", "Shipped")
ACCOUNT_TYPES = ("AccountOpened", "AccountClosed")
OBSERVER_HEADERS = (
    "observer-error",
    "observer-source-topic",
    "observer-source-partition",
    "observer-source-offset",
)

# -- the oracle: what the contract calls bad input ----------------------------------------------

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


# -- the generator --------------------------------------------------------------------------------


@dataclass
class Rec:
    """One record produced to the source topic, and what the oracle says about it."""

    kind: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    partition: int
    verdict: Verdict = field(default_factory=lambda: Verdict("?", "?"))
    offset: int = -1


class Raw:
    """JSON text spliced into a document as is (what json.dumps cannot write)."""

    def __init__(self, text: str) -> None:
        self.text = text


def dumps(obj: Any, ascii_only: bool) -> bytes:
    """JSON bytes of `obj`; lone surrogates become escapes (ascii_only) or surrogate bytes;
    NaN/Infinity are written as the non-JSON literals; `Raw` pieces are spliced in."""
    raws: dict[str, str] = {}

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            marker = f"@@raw{len(raws)}@@"
            raws[marker] = node.text
            return marker
        if isinstance(node, list):
            return [swap(v) for v in node]
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        return node

    text = json.dumps(swap(obj), ensure_ascii=ascii_only, allow_nan=True, separators=(",", ":"))
    for marker, piece in raws.items():
        text = text.replace(f'"{marker}"', piece)
    return text.encode("utf-8", "surrogatepass")


def _nest(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


odd_chars = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),  # lone surrogates
    st.sampled_from(["\x00", "\x1f", "\x7f", "\u2028", "\ufeff", "\U0010ffff", '"', "\\", "/"]),
)
odd_text = st.text(odd_chars, max_size=12)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)
    ),
    max_leaves=12,
)
deep_values = st.builds(
    lambda depth, kind: Raw(_nest(depth, kind)),
    st.one_of(st.integers(1, 200), st.integers(2000, 5000)),
    st.sampled_from(["list", "object"]),
)
SPECIAL_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    "",
    " ",
    "0",
    "null",
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    -(10**30),
    1e300,
    -1e300,
    1.5,
    -0.0,
    float("inf"),
    float("-inf"),
    float("nan"),
    [],
    {},
    [1],
    {"a": 1},
    "OrderPlaced",
    Raw("1e400"),
    Raw("-1e400"),
    Raw("01"),
    Raw("1."),
    Raw(".5"),
    Raw("+1"),
    Raw('"\\ud800"'),
    Raw('"\\udc00x"'),
    Raw('"\\ud83d\\ude00"'),
    Raw('"\\u0000"'),
    Raw('"\\x41"'),
    Raw('"\\uZZZZ"'),
    Raw("tru"),
    Raw("nul"),
]
special_values = st.sampled_from(SPECIAL_VALUES)
TIME_MENU: list[Any] = [
    T0,
    str(T0),
    float(T0) + 0.75,
    f"  {T0} ",
    -5,
    "-5",
    0,
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00.123Z",
    "2026-01-01T00:00:00.123456789z",
    "2026-01-01T00:00:00+05:30",
    "2026-01-01T00:00:00-0800",
    "2026-01-01 12:30:00",
    "2026-01-01",
    "1969-07-20T20:17:40Z",
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:60Z",
    "2026-1-1",
    "2026/01/01 00:00:00",
    "01.01.2026",
    "yesterday",
    "now",
    "T0",
    "1e12",
    "0x10",
    "12:00",
    "--5",
    "1767225600000.5",
    "\u00b2",
    10**15,
    -(10**15),
    10**17,
    10**30,
    1e300,
    2**63,
    "9" * 25,
]
time_menu = st.sampled_from(TIME_MENU)
any_value = st.one_of(json_values, special_values, deep_values)
time_value = st.one_of(time_menu, time_menu, any_value, st.integers(T0 - 86_400_000, T0))


HEADER_NAMES = st.sampled_from(
    [
        "event_id",
        "type",
        "x-trace",
        "observer-error",
        "observer-source-offset",
        "ünïcödé",
        "",
        "h" * 200,
    ]
)
HEADER_VALUES = st.one_of(
    st.binary(max_size=16),
    st.sampled_from([None, b"", b"\xff\xfe", b"\xed\xa0\x80", b"OrderPlaced", b"\x00"]),
)
ODD_HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5)
EVENT_IDS = st.integers(0, 2**64).map(lambda n: f"e-{n:x}".encode())
KEYS = st.integers(0, 400).map(lambda n: f"fz-{n}")
VALID_TIMES = st.integers(T0 - 86_400_000, T0)
ORDER_TIMES = st.one_of(
    VALID_TIMES,
    VALID_TIMES.map(str),
    VALID_TIMES.map(lambda ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat()),
)
TOTALS = st.one_of(st.integers(0, 10_000), json_values)
RECORD_KEYS = st.one_of(st.none(), st.binary(max_size=8), st.just(b"fz-k"))
INTERESTING_BYTES = b'"\\{}[],:0123456789-.eE +\x00\x1f\x7f\x80\xbf\xc0\xc3\xed\xef\xf4\xf8\xff'
MUTATIONS = ("flip", "delete", "insert", "replace", "truncate", "dup")
MUTANTS = 4  # mutants per drawn base event
KINDS = st.sampled_from(
    [
        "valid-order",
        "valid-account",
        "unknown-type",
        "random-bytes",
        "random-json",
        "wrong-fields",
        "wrong-fields",
        "mutated",
        "mutated",
        "mutated",
        "escapes",
        "deep",
        "empty",
        "account-key",
    ]
)
UNKNOWN_TYPES = st.one_of(
    st.sampled_from(
        [
            "OrderCancelled",
            "orderplaced",
            "OrderPlaced ",
            " Shipped",
            "ORDERPLACED",
            "Order",
            "null",
        ]
    ),
    st.sampled_from([0, 5, -1, 1.5, True, False, 2**64, 1e300]),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=10).map(lambda t: "x" + t),
)
FIELD_HOW = st.sampled_from(["keep", "keep", "replace", "delete"])
ESCAPE_PIECES = st.sampled_from(
    [
        b'"\\ud800"',
        b'"\\udc00x"',
        b'"a\\ud83d"',
        b'"\\ud83d\\ude00"',
        b'"\\u0000"',
        b'"\\x41"',
        b'"\\\'"',
        b'"\xed\xa0\x80"',  # an encoded surrogate
        b'"\xc0\xaf"',  # overlong
        b'"\xf4\x90\x80\x80"',  # above U+10FFFF
        b'"\xff"',
        b'"\x7f"',  # DEL: allowed in JSON strings
        b'"\x1f"',  # a control character: not allowed
        b'"tab\there"',
        b'"\xe2\x82"',  # a truncated sequence
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e400",
    ]
)
ESCAPE_FIELDS = st.sampled_from(["type", "order_id", "occurred_at", "note"])
WRAPS = st.sampled_from([b"%s", b"\xef\xbb\xbf%s", b" \r\n\t%s\n", b"%s garbage", b"%s\x00"])
DEEP_FIELDS = st.sampled_from(["total", "note", "order_id", "occurred_at", "type"])
EMPTY_VALUES = st.sampled_from([None, b"", b" ", b"null", b"{}", b"[]", b'""', b"0"])
BAD_RECORD_KEYS = st.sampled_from([None, b"", b"\xff\xfe", b"\xed\xa0\x80", b"\xc3"])
RANDOM_DOCS = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["type", "order_id", "occurred_at"]), json_values),
)


@st.composite
def headers_st(draw: st.DrawFn) -> list[tuple[str, bytes | None]]:
    out: list[tuple[str, bytes | None]] = []
    if draw(st.booleans()):
        out.append(("event_id", draw(EVENT_IDS)))
    if draw(st.integers(0, 3)) == 0:
        out.extend(draw(ODD_HEADERS))
        if draw(st.booleans()):
            out.reverse()
    return out


@st.composite
def valid_order(draw: st.DrawFn) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "type": draw(st.sampled_from(ORDER_TYPES)),
        "order_id": draw(KEYS),
        "occurred_at": draw(ORDER_TIMES),
    }
    if draw(st.booleans()):
        ev["total"] = draw(TOTALS)
    return ev


@st.composite
def valid_account(draw: st.DrawFn) -> dict[str, Any]:
    return {"type": draw(st.sampled_from(ACCOUNT_TYPES)), "account": draw(KEYS)}


VALID_ORDERS_ST = valid_order()
VALID_ACCOUNTS_ST = valid_account()
VALID_EVENTS_ST = st.one_of(VALID_ORDERS_ST, VALID_ACCOUNTS_ST)


def mutate(rnd: random.Random, data: bytes) -> bytes:
    """1 to 4 byte-level mutations, atheris-style: bit flips, deletions, insertions,
    replacements, truncation, a duplicated chunk. A seeded `Random` does the many small
    choices (as hypothesis choices they would make generation several times slower)."""
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.choice(MUTATIONS)
        pos = rnd.randrange(max(len(buf), 1))
        byte = rnd.choice(INTERESTING_BYTES) if rnd.random() < 0.6 else rnd.randrange(256)
        if op == "flip" and buf:
            buf[pos] ^= 1 << rnd.randrange(8)
        elif op == "delete" and buf:
            del buf[pos : pos + rnd.randint(1, 3)]
        elif op == "insert":
            buf[pos:pos] = bytes([byte])
        elif op == "replace" and buf:
            buf[pos] = byte
        elif op == "truncate":
            del buf[pos:]
        elif op == "dup" and buf:
            end = rnd.randint(pos, len(buf))
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


@st.composite
def fuzzed(draw: st.DrawFn) -> list[Rec]:
    """Records of the fuzzed topic (the oracle classifies them later): MUTANTS for a mutated
    valid event, else one."""
    kind = draw(KINDS)
    ascii_only = draw(st.booleans())
    key: bytes | None = draw(RECORD_KEYS)
    value: bytes | None
    if kind == "valid-order":
        value = dumps(draw(VALID_ORDERS_ST), ascii_only)
    elif kind == "valid-account":
        ev = draw(VALID_ACCOUNTS_ST)
        key = ev["account"].encode()
        value = dumps(ev, ascii_only)
    elif kind == "unknown-type":  # whatever else it lacks, no flow wants it: ignored
        ev = draw(VALID_EVENTS_ST)
        ev["type"] = draw(UNKNOWN_TYPES)
        ev.pop(draw(st.sampled_from(["order_id", "occurred_at", "account", "-"])), None)
        value = dumps(ev, ascii_only)
    elif kind == "random-bytes":
        value = draw(st.binary(max_size=300))
    elif kind == "random-json":
        value = dumps(draw(RANDOM_DOCS), ascii_only)
    elif kind == "wrong-fields":
        ev = draw(VALID_ORDERS_ST)
        for name, strat in (
            ("type", any_value),
            ("order_id", any_value),
            ("occurred_at", time_value),
            ("total", any_value),
        ):
            how = draw(FIELD_HOW)
            if how == "replace":
                ev[name] = draw(strat)
            elif how == "delete":
                ev.pop(name, None)
        value = dumps(ev, ascii_only)
    elif kind == "mutated":
        base = draw(VALID_EVENTS_ST)
        if "account" in base:
            key = base["account"].encode()
        rnd = random.Random(draw(st.integers(0, 2**32)))
        data = dumps(base, ascii_only)
        headers = draw(headers_st())
        return [
            Rec(kind, key, mutate(rnd, data), headers, rnd.randrange(PARTITIONS))
            for _ in range(MUTANTS)
        ]
    elif kind == "escapes":
        ev = draw(VALID_ORDERS_ST)
        ev[draw(ESCAPE_FIELDS)] = Raw("@@piece@@")
        raw = dumps(ev, ascii_only).replace(b"@@piece@@", draw(ESCAPE_PIECES))
        value = draw(WRAPS).replace(b"%s", raw)
    elif kind == "deep":
        ev = draw(VALID_ORDERS_ST)
        ev[draw(DEEP_FIELDS)] = draw(deep_values)
        value = dumps(ev, ascii_only)
    elif kind == "empty":
        value = draw(EMPTY_VALUES)
    else:  # account-key: an account event whose Kafka key is null, empty, not UTF-8, or fine
        ev = draw(VALID_ACCOUNTS_ST)
        key = draw(st.one_of(BAD_RECORD_KEYS, st.just(ev["account"].encode())))
        value = dumps(ev, ascii_only)
    headers = draw(headers_st())
    return [Rec(kind, key, value, headers, draw(st.integers(0, PARTITIONS - 1)))]


def generate(examples: int) -> list[Rec]:
    """Records of `examples` hypothesis examples: derandomized (the same records every run),
    generate phase only, no example database."""
    out: list[Rec] = []

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(fuzzed())
    def collect(recs: list[Rec]) -> None:
        out.extend(recs)

    collect()
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _shown(ms: int) -> str:
    """How the observer renders a time: ISO-8601 UTC, milliseconds only when not zero."""
    text = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def valid_events() -> tuple[list[Rec], dict[str, dict[str, int]]]:
    """Events of instances that must complete, with their times in several valid forms;
    returns the records and the step times each instance must show."""
    recs: list[Rec] = []
    expected: dict[str, dict[str, int]] = {}
    forms: list[Callable[[int], Any]] = [
        lambda ms: ms,
        str,
        _iso,
        lambda ms: _iso(ms).replace("+00:00", "Z"),
        lambda ms: float(ms),
    ]
    for i in range(VALID_ORDERS):
        key = f"ok-o-{i}"
        part = i % PARTITIONS
        times = {"placed": T0 + i, "paid": T0 + i + 1000, "shipped": T0 + i + 2000}
        expected[f"fuzz-orders/{key}"] = times
        for (step, ms), etype in zip(times.items(), ORDER_TYPES, strict=True):
            ev = {
                "type": etype,
                "order_id": key,
                "occurred_at": forms[(i + len(recs)) % len(forms)](ms),
                "total": i,
            }
            recs.append(
                Rec(
                    f"ok-{step}",
                    key.encode(),
                    orjson.dumps(ev),
                    [("event_id", f"{key}-{step}".encode())],
                    part,
                )
            )
    for i in range(VALID_ACCOUNTS):
        key = f"ok-a-{i}"
        expected[f"fuzz-accounts/{key}"] = {}
        for etype in ACCOUNT_TYPES:
            recs.append(
                Rec(f"ok-{etype}", key.encode(), orjson.dumps({"type": etype}), [], i % PARTITIONS)
            )
    return recs, expected


def edge_cases() -> list[Rec]:
    """Every value of the menus once, in an otherwise valid event (the random draws may miss
    some): each time as `occurred_at`, each special value as `type` and as `order_id`."""
    recs: list[Rec] = []
    for i, at in enumerate(TIME_MENU):
        ev = {"type": "OrderPlaced", "order_id": f"edge-t-{i}", "occurred_at": at}
        recs.append(Rec("edge-time", None, dumps(ev, True), [], i % PARTITIONS))
    for i, v in enumerate(SPECIAL_VALUES):
        for name in ("type", "order_id"):
            ev = {"type": "PaymentCaptured", "order_id": f"edge-v-{i}", "occurred_at": T0}
            ev[name] = v
            recs.append(Rec(f"edge-{name}", None, dumps(ev, False), [], i % PARTITIONS))
    return recs


def interleave(fuzz: list[Rec], valid: list[Rec]) -> list[Rec]:
    """The valid events spread among the fuzzed ones, each instance's events in order."""
    rnd = random.Random(5)
    slots = sorted(rnd.sample(range(len(fuzz) + len(valid)), len(valid)))
    out: list[Rec] = []
    fi = vi = 0
    for i in range(len(fuzz) + len(valid)):
        if vi < len(slots) and slots[vi] == i:
            out.append(valid[vi])
            vi += 1
        else:
            out.append(fuzz[fi])
            fi += 1
    return out


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one `observer run` over the records left behind."""

    source: str
    seconds: float
    metrics: str
    dlq: list[Record]
    outcomes: list[Record]
    views: dict[str, httpx.Response]
    log: str


def produce_all(bootstrap: str, topic: str, recs: list[Rec]) -> None:
    """Produces the records in order (idempotent producer) and notes each one's offset."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    errors: list[str] = []
    now = time.time_ns() // 1_000_000

    def delivered(rec: Rec) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                rec.offset = msg.offset()

        return cb

    for rec in recs:
        headers: list[tuple[str, str | bytes | None]] = list(rec.headers)
        producer.produce(
            topic,
            value=rec.value,
            key=rec.key,
            headers=headers,
            partition=rec.partition,
            timestamp=now,
            on_delivery=delivered(rec),
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "records not delivered"
    assert not errors, errors[:3]
    assert all(r.offset >= 0 for r in recs)


def committed_all(bootstrap: str, group: str, topic: str) -> bool:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        done = [max(p.offset, 0) for p in c.committed(parts, timeout=10)]  # none yet: 0
        ends = [c.get_watermark_offsets(p, timeout=10)[1] for p in parts]
    finally:
        c.close()
    return done == ends


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text, 0 when absent."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def wait_for(what: Callable[[], Any], timeout: float, message: str, p: ObserverProcess) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline or not p.running():
            raise AssertionError(f"timed out after {timeout}s waiting for {message}:\n{p.tail()}")
        time.sleep(0.2)


@pytest.fixture
def run_observer(
    stack: Any,
    unique: str,
    tmp_path: Path,
    create_topics: Callable[..., list[str]],
    observer_procs: list[ObserverProcess],
) -> Callable[[list[Rec], list[str]], Run]:
    """`run_observer(records, views)`: produces the records to a new source topic, runs ONE
    `observer run` over them until it committed every offset and published everything, checks
    it is alive and healthy, and stops it with SIGTERM (exit 0)."""

    def run(recs: list[Rec], views: list[str]) -> Run:
        source, dlq, outcomes = (f"{unique}.{n}" for n in ("source", "dlq", "outcomes"))
        create_topics([source], PARTITIONS)
        create_topics([dlq, outcomes, f"{unique}.alerts"], 2)
        flow_file = tmp_path / "fuzz-flows.yaml"
        flow_file.write_text(FLOWS.replace("SOURCE", source))
        produce_all(stack.bootstrap_servers, source, recs)  # read by the observer as a backlog
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
        env.update(
            OBSERVER_REDIS_URL=stack.redis_url,
            OBSERVER_KEY_PREFIX=f"{unique}:obs",  # under f"{unique}:": removed after the test
            OBSERVER_ALERTS_TOPIC=f"{unique}.alerts",
            OBSERVER_OUTCOMES_TOPIC=outcomes,
            OBSERVER_DLQ_TOPIC=dlq,
            OBSERVER_HTTP_HOST="127.0.0.1",
            OBSERVER_IDLE_GRACE_MS="200",
            OBSERVER_COMMIT_INTERVAL_MS="50",
            OBSERVER_KAFKA_SESSION_TIMEOUT_MS="6000",
        )
        group = f"{unique}-observer"
        started = time.monotonic()
        args = ("--bootstrap-servers", stack.bootstrap_servers, "--group-id", group)
        p = ObserverProcess("observer", flow_file, env, *args)
        observer_procs.append(p)
        try:
            p.wait_ready()

            def api(path: str) -> httpx.Response:
                return httpx.get(f"http://127.0.0.1:{p.port}{path}", timeout=5)

            wait_for(
                lambda: committed_all(stack.bootstrap_servers, group, source),
                90,
                "every source offset committed",
                p,
            )
            wait_for(
                lambda: metric(api("/metrics").text, "observer_outbox_depth") == 0,
                30,
                "the outbox to drain",
                p,
            )
            seconds = time.monotonic() - started
            time.sleep(1.0)  # anything still to come (a repeat) has had time to arrive
            assert p.running(), f"observer run exited ({p.proc.returncode}):\n{p.tail()}"
            assert api("/healthz").json() == {"status": "ok"}
            ready = api("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
            run = Run(
                source,
                seconds,
                api("/metrics").text,
                consume_all(stack.bootstrap_servers, dlq, timeout=30),
                consume_all(stack.bootstrap_servers, outcomes, timeout=30),
                {name: api(f"/instances/{name}") for name in views},
                "",
            )
        finally:
            rc = p.stop()
            if os.environ.get("FUZZ_LOG"):  # the whole log, to look into a failure
                Path(os.environ["FUZZ_LOG"]).write_text(p.log)
        assert rc == 0, f"observer run exited {rc}:\n{p.tail()}"
        run.log = p.log
        return run

    return run


def _show(rec: Rec) -> str:
    return (
        f"{rec.kind} p{rec.partition}@{rec.offset} key={rec.key!r:.40} "
        f"value={rec.value!r:.160} headers={rec.headers!r:.100} oracle={rec.verdict}"
    )


def check(run: Run, recs: list[Rec], expected: dict[str, dict[str, int]]) -> None:
    check_dead_letters(run.source, recs, run.dlq)
    check_counts(run.source, recs, run.metrics)
    check_valid_applied(expected, run.outcomes, run.views)
    assert "Traceback" not in run.log, run.log[-20_000:]


# -- the tests ------------------------------------------------------------------------------------


def test_fuzzed_records_never_crash_the_observer_and_every_bad_one_is_dead_lettered_once(
    run_observer: Callable[[list[Rec], list[str]], Run], figures: list[str]
) -> None:
    fuzz = generate(FUZZ_EXAMPLES) + edge_cases()
    valid, expected = valid_events()
    recs = interleave(fuzz, valid)
    for rec in recs:
        rec.verdict = oracle(rec.key, rec.value)
    assert all(r.verdict.outcome == "applied" for r in valid)
    by_outcome = Counter(r.verdict.outcome for r in recs)
    # The generator must keep producing every class (a change of it that stops doing so would
    # silently weaken the test).
    assert by_outcome["dead_letter"] >= 1000 and by_outcome["applied"] >= 600, by_outcome
    assert by_outcome["ignored"] >= 100, by_outcome

    views = list(expected)[:: max(len(expected) // 10, 1)]
    run = run_observer(recs, views)
    figures.append(
        f"{len(recs)} records ({dict(by_outcome)}) on {PARTITIONS} partitions; "
        f"{len(run.dlq)} dead letters; read, applied and published in {run.seconds:.1f}s"
    )
    check(run, recs, expected)


def _order(key: str, etype: str, at: Any) -> bytes:
    return orjson.dumps({"type": etype, "order_id": key, "occurred_at": at})


def test_an_event_time_out_of_range_is_bad_input_and_harms_no_instance(
    run_observer: Callable[[list[Rec], list[str]], Run],
) -> None:
    recs: list[Rec] = []
    expected: dict[str, dict[str, int]] = {}
    for i, at in enumerate([10**15, -(10**15), 1e300, "9" * 20, 2**63]):
        key = f"oor-{i}"
        recs.append(Rec("out-of-range", None, _order(key, "OrderPlaced", at), [], i % PARTITIONS))
        times = {"placed": T0, "paid": T0 + 1000, "shipped": T0 + 2000}
        expected[f"fuzz-orders/{key}"] = times
        for (_, ms), etype in zip(times.items(), ORDER_TYPES, strict=True):
            recs.append(Rec("ok", None, _order(key, etype, ms), [], i % PARTITIONS))
    for rec in recs:
        rec.verdict = oracle(rec.key, rec.value)
    assert [r.verdict.outcome for r in recs[::4]] == ["dead_letter"] * 5
    check(run_observer(recs, list(expected)), recs, expected)


def check_dead_letters(source: str, recs: list[Rec], dlq: list[Record]) -> None:
    by_src: dict[tuple[str, int, int], list[Record]] = {}
    for d in dlq:
        where = (
            (d.header("observer-source-topic") or b"").decode(),
            int(d.header("observer-source-partition") or -1),
            int(d.header("observer-source-offset") or -1),
        )
        by_src.setdefault(where, []).append(d)
    problems: list[str] = []
    dups = {w: len(ds) for w, ds in by_src.items() if len(ds) > 1}
    if dups:
        problems.append(f"{len(dups)} records dead-lettered more than once: {list(dups)[:10]}")
    known = {(source, r.partition, r.offset): r for r in recs}
    strangers = [w for w in by_src if w not in known]
    if strangers:
        problems.append(f"dead letters of records never produced: {strangers[:10]}")
    missed = [
        r
        for r in recs
        if r.verdict.outcome == "dead_letter" and not by_src.get((source, r.partition, r.offset))
    ]
    wrongly = [
        r
        for r in recs
        if r.verdict.outcome != "dead_letter" and by_src.get((source, r.partition, r.offset))
    ]
    for r in missed[:15]:
        problems.append(f"bad record not dead-lettered: {_show(r)}")
    for r in wrongly[:15]:
        d = by_src[(source, r.partition, r.offset)][0]
        problems.append(f"good record dead-lettered ({d.header('observer-error')!r}): {_show(r)}")
    altered = []
    for r in recs:
        for d in by_src.get((source, r.partition, r.offset), [])[:1]:
            orig = tuple(r.headers)
            added = dict(d.headers[len(orig) :])
            if (
                d.key != r.key
                or d.value != r.value
                or d.headers[: len(orig)] != orig
                or not set(OBSERVER_HEADERS) <= set(added)
                or not (added.get("observer-error") or b"").strip()
            ):
                altered.append(
                    f"{_show(r)}\n    dead letter: key={d.key!r:.40} value={d.value!r:.120} "
                    f"headers={d.headers!r:.300}"
                )
    if altered:
        problems.append(f"{len(altered)} dead letters not the original record plus headers:")
        problems.extend(altered[:10])
    summary = (
        f"{len(recs)} records: {Counter(r.verdict.outcome for r in recs)}; "
        f"{len(dlq)} dead letters; {len(missed)} bad ones missing, {len(wrongly)} good ones "
        "dead-lettered"
    )
    assert not problems, summary + "\n" + "\n".join(problems)


def check_counts(source: str, recs: list[Rec], metrics: str) -> None:
    want = Counter(r.verdict.outcome for r in recs)
    got = {
        o: metric(metrics, "observer_events_total", topic=source, outcome=o)
        for o in ("applied", "ignored", "dead_letter")
    }
    assert got == {o: float(want[o]) for o in got}, (got, want)
    assert metric(metrics, "observer_dead_letters_total", topic=source) == want["dead_letter"]
    for where in ("decode", "apply", "timer"):
        assert metric(metrics, "observer_processing_errors_total", where=where) == 0, where


def check_valid_applied(
    expected: dict[str, dict[str, int]], outcomes: list[Record], views: dict[str, httpx.Response]
) -> None:
    ended: dict[str, list[Any]] = {}
    for o in outcomes:
        js = orjson.loads(o.value or b"null")
        ended.setdefault(f"{js['flow']}/{js['key']}", []).append(js)
    for name, times in expected.items():
        got = ended.get(name)
        assert got, f"{name}: no outcome"
        assert len({orjson.dumps(g) for g in got}) == 1, got  # repeats are the same record
        out = got[0]
        assert out["outcome"] == "completed" and out["deviations"] == [], out
        if times:
            assert out["steps"] == {step: _shown(ms) for step, ms in times.items()}, out
    for name, resp in views.items():
        assert resp.status_code == 200, (name, resp.text)
        view = resp.json()
        assert (view["state"], view["outcome"]) == ("ended", "completed"), view
