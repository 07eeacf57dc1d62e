"""A small harness for engine tests: write a flow and events, run replay, parse the lines."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from observer.replay import run_replay
from observer.topics import Topics

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

BASE_FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id, id: header.eid}
  pay: {topic: pay, type: value.type, key: value.id, id: header.eid}
  ship: {topic: ship, type: value.type, key: value.id, id: header.eid}
steps:
  - step: placed
    on: orders.Placed
    capture: [value.total]
  - step: paid
    on: pay.Paid
    within: 10s
    warn: 80%
    if_missing: [cancel]
    if_late: [notify]
  - step: shipped
    on: ship.Shipped
    within: 20s
errors:
  - on: pay.Failed
    do: [refund]
    then: comp
paths:
  comp:
    outcome: compensated
    steps:
      - step: refunded
        on: pay.Refunded
        within: 5s
buffer: 30s
retain: 1h
expire: 1d
actions:
  cancel:
    publish: {topic: cmds, key: "{{ key }}", value: {type: Cancel, id: "{{ key }}", total: "{{ steps.placed.value.total }}"}}
  refund:
    publish: {topic: cmds, key: "{{ key }}", value: {type: Refund, id: "{{ key }}"}}
  notify:
    alert: {severity: info, summary: "late by {{ deviation.late_by }}"}
"""

TOPIC_OF = {
    "Placed": "orders",
    "Paid": "pay",
    "Failed": "pay",
    "Refunded": "pay",
    "Shipped": "ship",
}


def ev(
    etype: str,
    key: str,
    at_s: float,
    eid: str | None = None,
    topic: str | None = None,
    **value: Any,
) -> dict[str, Any]:
    """A record of type `etype` for order `key` at T0 + at_s seconds (event time = timestamp)."""
    t = T0 + round(at_s * 1000)
    return {
        "topic": topic or TOPIC_OF.get(etype, "orders"),
        "key": key,
        "value": {"type": etype, "id": key, **value},
        "headers": {"eid": eid or f"{etype}-{key}-{t}"},
        "timestamp": t,
    }


def run(
    tmp: Path,
    events: Sequence[dict[str, Any]],
    flow: str = BASE_FLOW,
    until: int | None = None,
    deploys: Iterable[tuple[int, str]] = (),
    topics: Topics | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Replay `events` against `flow`; return the published lines as dicts."""
    flow_file = tmp / "flow.yaml"
    flow_file.write_text(flow)
    events_file = tmp / "events.jsonl"
    events_file.write_text("".join(json.dumps(e) + "\n" for e in events))
    lines = run_replay(str(flow_file), str(events_file), until, list(deploys), topics, warn)
    return [orjson.loads(line) for line in lines]


def alerts(lines: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    """(kind, step, key) of every alert line, in order."""
    return [
        (x["value"]["kind"], x["value"]["step"], x["key"])
        for x in lines
        if x["topic"] == "observer.alerts"
    ]


def outcomes(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x["value"] for x in lines if x["topic"] == "observer.outcomes"]


def on_topic(lines: list[dict[str, Any]], topic: str) -> list[dict[str, Any]]:
    return [x for x in lines if x["topic"] == topic]
