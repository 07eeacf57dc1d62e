"""Generated hostile inputs for `tests/e2e/test_fuzz_hostile.py`: flow files whose templates
(and numbers and durations) are drawn from a menu of what breaks careless code, and source
records from bytes to megabytes (deep nesting, non-UTF-8, extreme numbers, keys and times out
of range, orphans).

Seeded `random.Random` rather than hypothesis: the flows and records must be the same for
`observer replay` (the oracle) and the live `observer run`, and the run must be reproducible
from the seed printed with the figures.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from observer import jsonexact

__all__ = ["HANDWRITTEN", "Generated", "Sent", "flow_files", "records"]

# One flow written by hand, run beside the generated ones: every order's handlers multiply,
# measure and copy its hostile values (an alert with `| length` of the items, a command with
# the total times 100, one with the note), so each kind of value meets them; its commands
# say `by: hostile`, its alerts and action dead letters name the flow.
HANDWRITTEN = """\
flow: hostile
version: 1
sources:
  orders: {topic: SOURCE, type: value.type, key: value.id, id: header.eid, time: value.at}
steps:
  - step: placed
    on: orders.Placed
    capture: [value.total, value.items, value.note]
  - step: paid
    on: orders.Paid
    within: 2s
    if_missing: [explain, cancel, notify]
errors:
  - on: orders.Failed
    do: [cancel, refund]
buffer: 3s
actions:
  explain:
    alert: {summary: "order {{ key }}: {{ steps.placed.value.items | length }} items"}
  cancel:
    publish:
      topic: CMDS
      key: "{{ key }}"
      value: {type: Cancel, by: hostile, id: "{{ key }}", amount: "{{ steps.placed.value.total * 100 }}"}
  refund:
    publish: {topic: CMDS, key: "{{ key }}", value: {type: Refund, by: hostile, id: "{{ key }}"}}
  notify:
    publish:
      topic: CMDS
      key: "{{ key }}"
      value: {type: Notify, by: hostile, note: "{{ steps.placed.value.note }}"}
"""

# Expressions over the captured values, the instance and the deviation: some always work,
# some fail on some data (an action error at run time), some can never be rendered within
# the template limits (refused by `observer validate` with file:line).
EXPRESSIONS = [
    "key",
    "deviation.kind",
    "steps.placed.value.total",
    "steps.placed.value.total * 100",
    "steps.placed.value.total ** 3",
    "steps.placed.value.total // 0",
    "steps.placed.value.total | int + 1",
    "steps.placed.value.total | float * 1e308",
    "steps.placed.value.items | length",
    "steps.placed.value.items[0].sku",
    "steps.placed.value.items | map(attribute='sku') | join(',')",
    "steps.placed.value.note",
    "steps.placed.value.note | upper",
    "steps.placed.value.note * 3",
    "steps.placed.value.note | replace('n', 'nnnnnnnnnn')",
    "steps.placed.value.nest",
    "steps.placed.value.nest.a.b.c[2].d.e",
    "steps.placed.value.nest | tojson",
    "range(steps.placed.value.total or 0) | list | length",
    "7 ** (10 ** 8)",  # refused: constant folding of large operations is off, and bounded
    "'a' * 10 ** 8",  # refused
    "range(10 ** 9) | list | length",  # refused
]
LOOPS = [
    "{% for i in steps.placed.value.items %}{{ i }},{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
]
VERSIONS = ["1"] * 8 + ["2147483647", "2147483648", "100000000000000000000000000000000"]
WITHINS = ["2s"] * 6 + ["1500ms", "99999999999999999999999d"]

FLOW = """\
flow: gen{n}
version: {version}
sources:
  orders: {{topic: SOURCE, type: value.type, key: value.id, id: header.eid, time: value.at}}
steps:
  - step: placed
    on: orders.Placed
    capture: [value.total, value.items, value.note, value.nest]
  - step: paid
    on: orders.Paid
    within: {within}
    if_missing: [{missing}]
errors:
  - on: orders.Failed
    do: [{failed}]
buffer: 3s
actions:
  explain:
    alert: {{summary: {summary}}}
  cancel:
    publish:
      topic: CMDS
      key: {key}
      value: {{type: Cancel, id: "{{{{ key }}}}", amount: {amount}}}
  notify:
    publish: {{topic: CMDS, key: "{{{{ key }}}}", value: {{type: Notify, note: {note}}}}}
"""


def _quoted(template: str) -> str:
    return '"' + template.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _template(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return _quoted(rng.choice(LOOPS))
    parts = [f"{{{{ {rng.choice(EXPRESSIONS)} }}}}" for _ in range(rng.randint(1, 2))]
    return _quoted(" ".join(parts))


def flow_files(rng: random.Random, count: int) -> list[str]:
    """`count` flow files (SOURCE and CMDS to be replaced by topic names)."""
    out = []
    for n in range(count):
        actions = ["explain", "cancel", "notify"]
        rng.shuffle(actions)
        out.append(
            FLOW.format(
                n=n,
                version=rng.choice(VERSIONS),
                within=rng.choice(WITHINS),
                missing=", ".join(actions[: rng.randint(1, 3)]),
                failed=", ".join(actions[: rng.randint(1, 3)]),
                summary=_template(rng),
                key=_template(rng) if rng.random() < 0.3 else '"{{ key }}"',
                amount=_template(rng),
                note=_template(rng),
            )
        )
    return out


@dataclass
class Sent:
    """One source record: exactly these bytes go to Kafka; `replay` is its value in the
    events file (the same text, or -- for bytes that are not UTF-8 -- another value that is
    bad input for the same reason, so replay dead-letters the same offset)."""

    what: str
    key: bytes | None
    value: bytes
    eid: str
    at: int
    replay: str = ""
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.headers = [("eid", self.eid.encode())]
        if not self.replay:
            self.replay = self.value.decode()


_TOTALS: list[Any] = [
    7,
    "lots",
    None,
    2**70,
    -(2**63) - 1,
    1.5e308,
    -0.0,
    "9" * 100_000,
    10**5,
]
_ITEMS: list[Any] = [[{"sku": "a"}, {"sku": "b"}], 7, None, [[[[[[[[[[]]]]]]]]]], "str"]
_NOTES: list[Any] = ["", "é\u2028\x00\u202e" * 300, "n" * 70_000, "n" * 1_200_000]
_NESTS: list[Any] = [None, {"a": {"b": {"c": [1, 2, {"d": None}]}}}, "[" * 500 + "]" * 500]


def _value(**fields: Any) -> bytes:
    return jsonexact.dumps({k: v for k, v in fields.items() if v is not None})


def _orders(rng: random.Random, t0: int, count: int) -> list[Sent]:
    out = []
    for i in range(count):
        key: Any = f"o-{i}" if i % 20 else 10**30 + i  # beyond 64 bits, all distinct
        at = t0 + i * 40
        placed = _value(
            type="Placed",
            id=key,
            at=at,
            total=rng.choice(_TOTALS),
            items=rng.choice(_ITEMS),
            note=rng.choice(_NOTES),
            nest=rng.choice(_NESTS),
        )
        out.append(Sent("order", str(key).encode(), placed, f"{i}-placed", at))
        fate = rng.random()
        if fate < 0.4:
            paid = _value(type="Paid", id=key, at=at + 500)
            out.append(Sent("order", str(key).encode(), paid, f"{i}-paid", at + 500))
        elif fate < 0.6:
            failed = _value(type="Failed", id=key, at=at + 300)
            out.append(Sent("order", str(key).encode(), failed, f"{i}-failed", at + 300))
    return out


def _bad(t0: int, i: int) -> list[Sent]:
    """Records that are bad input, each of them once, plus orphans (good events of no
    instance) -- around event time `t0`."""
    at = t0 + i
    deep = b'{"type": "Placed", "id": "deep", "at": %d, "x": ' % at + b"[" * 5000 + b"]" * 5000
    return [
        Sent("empty", None, b"", "bad-empty", at),
        Sent("not json", b"k", b"\x00\x01 not json", "bad-bytes", at),
        Sent("non-utf8", b"\xff", b'{"type": "Placed", "id": "\xff\xfe"}', "bad-utf8", at, "{"),
        Sent("deep", None, deep + b"}", "bad-deep", at),
        Sent("1.5 MB", None, b"{" + b" " * 1_500_000 + b"x", "bad-big", at),
        Sent("no type", None, _value(id="o-x", at=at), "bad-notype", at),
        Sent("empty key", None, _value(type="Placed", id="", at=at), "bad-nokey", at),
        Sent("5 KB key", None, _value(type="Placed", id="k" * 5000, at=at), "bad-longkey", at),
        Sent("time 2^70", None, _value(type="Placed", id="o-t", at=2**70), "bad-time", at),
        Sent("time text", None, _value(type="Placed", id="o-t", at="soon"), "bad-time2", at),
        Sent("NaN", None, b'{"type": "Placed", "id": "o-n", "total": NaN}', "bad-nan", at),
        Sent("1e999", None, b'{"type": "Placed", "id": "o-n", "total": 1e999}', "bad-inf", at),
    ]


def _orphans(t0: int, count: int) -> list[Sent]:
    return [
        Sent("orphan", None, _value(type="Paid", id=f"x-{i}", at=t0 + i), f"orphan-{i}", t0 + i)
        for i in range(count)
    ]


@dataclass
class Generated:
    records: list[Sent]
    span_ms: int


def records(rng: random.Random, t0: int, orders: int, orphans: int) -> Generated:
    """Orders with hostile values, the bad records and the orphans, in event time order (as
    produced: the watermark follows record timestamps)."""
    recs = _orders(rng, t0, orders) + _bad(t0 + orders * 20, 1) + _orphans(t0 + 100, orphans)
    recs.sort(key=lambda s: s.at)
    return Generated(recs, orders * 40 + 1000)
