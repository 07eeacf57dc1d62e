"""What a measurement left behind, read back: the records of a topic, and the alerts checked
against what the replay expects of the workload (`expected.json`); Redis memory in use."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks.common import end_offsets, kafka_conf


@dataclass
class Record:
    """A record read back from a topic: decoded value, timestamp, partition, headers."""

    value: Any
    ts: int
    partition: int
    headers: dict[str, bytes]


def _headers(raw: Any) -> dict[str, bytes]:
    """A record's headers (a list of (name, value) pairs, or None) as a dict."""
    out: dict[str, bytes] = {}
    for k, v in raw or ():
        out[str(k)] = v.encode() if isinstance(v, str) else bytes(v or b"")
    return out


def count_records(
    bootstrap: str, topic: str, decode: Callable[[bytes], Any] = orjson.loads
) -> list[Record]:
    """Every record of a topic now."""
    from confluent_kafka import Consumer, TopicPartition

    ends = end_offsets(bootstrap, [topic])
    todo = {tp: hi for tp, (lo, hi) in ends.items() if hi > lo}
    out: list[Record] = []
    if not todo:
        return out
    c = Consumer(kafka_conf(bootstrap, **{"group.id": "bench-reader", "enable.auto.commit": False}))
    c.assign([TopicPartition(t, p, ends[(t, p)][0]) for (t, p) in todo])
    deadline = time.monotonic() + 60
    while todo and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error():
                continue
            tp = (str(m.topic()), int(m.partition() or 0))
            headers = _headers(m.headers())
            out.append(Record(decode(m.value() or b"null"), m.timestamp()[1], tp[1], headers))
            if tp in todo and int(m.offset() or 0) + 1 >= todo[tp]:
                del todo[tp]
    c.close()
    return out


def redis_client(url: str) -> Any:
    from observer.redis_settings import parse_redis_url

    return parse_redis_url(url).redis_py_client(30.0)


def redis_cpu_s(url: str) -> float:
    """CPU seconds Redis used so far, user + system (a cluster: summed over its masters)."""
    r = redis_client(url)
    try:
        nodes = r.get_primaries() if hasattr(r, "get_primaries") else [None]
        total = 0.0
        for node in nodes:
            info = r.info("cpu", target_nodes=node) if node is not None else r.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total
    finally:
        r.close()


def redis_used_memory(url: str) -> int:
    """`used_memory` (a cluster: summed over its masters)."""
    r = redis_client(url)
    try:
        if hasattr(r, "get_primaries"):
            nodes = r.get_primaries()
            return sum(int(r.info("memory", target_nodes=node)["used_memory"]) for node in nodes)
        return int(r.info("memory")["used_memory"])
    finally:
        r.close()


def check_alerts(
    records: Sequence[Record], expected: dict[str, Any], ranges: bool = True, due_only: bool = False
) -> dict[str, Any]:
    """Alerts read back against what the replay expects of the workload (`expected.json`).

    - `repeats`: records whose `observer-id` header came before (at-least-once delivery allows
      them; consumers drop them by id): counted, then left out of everything below;
    - per order (its kind from `fault_orders`, else `ok`): an alert that is not one of its
      kind's template alerts (certain or possible) is `unexpected`; the same (kind, step)
      raised again for an order under another id is a `duplicate`; a certain template alert
      not raised is `absent`;
    - with `ranges`, the counts by kind against `alerts_min`/`alerts_max` (`out_of_range`:
      kind -> [min, max, got]);
    - with `due_only`, a possible alert is `unexpected` too: each order must raise exactly its
      kind's certain alerts (what the peers are held to: their `missing` count is the due one).
    `ok` when all of these are clean (repeats are reported, not failed).
    """
    templates = expected["templates"]
    kind_of = {key: k for k, keys in expected["fault_orders"].items() for key in keys}
    allowed = {
        k: {
            (str(a), None if s is None else str(s))
            for a, s in t["certain"] + ([] if due_only else t["possible"])
        }
        for k, t in templates.items()
    }
    seen_ids: set[bytes] = set()
    repeats = 0
    raised: dict[str, Counter[tuple[str, str | None]]] = {}
    for r in records:
        oid = r.headers.get("observer-id")
        if oid is not None:
            if oid in seen_ids:
                repeats += 1
                continue
            seen_ids.add(oid)
        v = r.value if isinstance(r.value, dict) else {}
        step = v.get("step")
        alert = (str(v.get("kind")), None if step is None else str(step))
        raised.setdefault(str(v.get("key")), Counter())[alert] += 1
    counts: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    duplicates: Counter[str] = Counter()
    absent: Counter[str] = Counter()
    examples: list[str] = []
    for key, got in raised.items():
        okind = kind_of.get(key, "ok")
        for (akind, step), c in got.items():
            counts[akind] += c
            label = f"{okind} order: {akind} {step}"
            if (akind, step) not in allowed.get(okind, set()):
                unexpected[label] += c
                if len(examples) < 5:
                    examples.append(f"{key}: {akind} {step}")
            elif c > 1:
                duplicates[label] += c - 1
                if len(examples) < 5:
                    examples.append(f"{key}: {akind} {step} x{c}")
    for okind, keys in expected["fault_orders"].items():
        for akind, step in templates[okind]["certain"]:
            alert = (str(akind), None if step is None else str(step))
            n = sum(1 for key in keys if raised.get(key, Counter())[alert] == 0)
            if n:
                absent[f"{okind} order: {akind} {step}"] += n
    out_of_range: dict[str, list[int]] = {}
    if ranges:
        lo, hi = expected["alerts_min"], expected["alerts_max"]
        for k in sorted(set(lo) | set(hi) | set(counts)):
            if not lo.get(k, 0) <= counts.get(k, 0) <= hi.get(k, 0):
                out_of_range[k] = [lo.get(k, 0), hi.get(k, 0), counts.get(k, 0)]
    return {
        "ok": not (out_of_range or unexpected or duplicates or absent),
        "records": len(records),
        "repeats": repeats,
        "counts": dict(sorted(counts.items())),
        "out_of_range": out_of_range,
        "unexpected": dict(unexpected),
        "duplicates": dict(duplicates),
        "absent": dict(absent),
        "examples": examples,
    }


def distinct_outcomes(records: Sequence[Record]) -> dict[str, int]:
    """Outcomes by kind, repeats of an `observer-id` counted once."""
    seen: set[bytes] = set()
    c: Counter[str] = Counter()
    for r in records:
        oid = r.headers.get("observer-id")
        if oid is not None:
            if oid in seen:
                continue
            seen.add(oid)
        if isinstance(r.value, dict):
            c[str(r.value.get("outcome"))] += 1
    return dict(sorted(c.items()))
