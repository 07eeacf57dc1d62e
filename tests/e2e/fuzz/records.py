"""The records of the fuzzed topic: one hypothesis example each (derandomized: the same records
every run), byte-level mutants of valid events, every edge-case value once, and the valid
events of instances that must complete, interleaved."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.e2e.fuzz.oracle import ACCOUNT_TYPES, ORDER_TYPES, Verdict
from tests.e2e.fuzz.strategies import (
    BAD_RECORD_KEYS,
    DEEP_FIELDS,
    EMPTY_VALUES,
    ESCAPE_FIELDS,
    ESCAPE_PIECES,
    FIELD_HOW,
    INTERESTING_BYTES,
    KINDS,
    MUTATIONS,
    RANDOM_DOCS,
    RECORD_KEYS,
    SPECIAL_VALUES,
    T0,
    TIME_MENU,
    UNKNOWN_TYPES,
    VALID_ACCOUNTS_ST,
    VALID_EVENTS_ST,
    VALID_ORDERS_ST,
    WRAPS,
    Raw,
    any_value,
    deep_values,
    dumps,
    headers_st,
    time_value,
)

PARTITIONS = 4
FUZZ_EXAMPLES = 1800  # hypothesis examples: one fuzzed record each, MUTANTS for "mutated"
VALID_ORDERS = 60  # verified instances: 3 events each
VALID_ACCOUNTS = 40  # verified instances: 2 events each
MUTANTS = 4  # mutants per drawn base event


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
    """Records of `examples` hypothesis examples: derandomized (the same records every run of
    the same code: constants found in the project's loaded modules are drawn too), generate
    phase only, no example database."""
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
