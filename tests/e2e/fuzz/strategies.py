"""What the fuzzer draws from: JSON text `json.dumps` cannot write (`Raw`, `dumps`), menus of
edge-case values, times, headers, keys and byte-level pieces, and the hypothesis strategies
built on them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from tests.e2e.fuzz.oracle import ACCOUNT_TYPES, ORDER_TYPES

# Event times of the valid events: ten minutes before the module is imported, so they are in the
# past, yet no window (1h/2h from them) closes while the session runs. (An hour ago, as it was,
# put the 1h deadlines at import time: a partition read to its end between an order's placed and
# paid records moved the watermark past them, a `missing` the test did not expect.)
T0 = (time.time_ns() // 1_000_000 // 1000) * 1000 - 600_000


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
