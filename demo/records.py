"""The observer's records as the demo reads them: an alert, an outcome or a command about one
order. Pure.

One reading serves both sides of the demo's verdict — what `observer run` published on Kafka
and what the engine publishes over the same shop records (`expected.py`) — so the two are
compared like with like.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from observer.topics import Topics

__all__ = [
    "IncidentRecord",
    "Incidents",
    "ObserverRecord",
    "Published",
    "RecordReader",
    "command_type",
    "lacking",
]

INCIDENT_KINDS = ("incident", "incident_resolved")


def command_type(value: Any, headers: Mapping[str, str]) -> str | None:
    """The type of a command record: its value's `type`, else a `type`/`ce_type` header."""
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return str(value["type"])
    return headers.get("type") or headers.get("ce_type")


@dataclass(frozen=True, slots=True)
class ObserverRecord:
    """One record the observer published about order `key`.

    `what`: the alert's kind, the outcome, or the command's type; `step`: the alert's step
    (None for instance-level alerts such as `error`, and for outcomes and commands).
    """

    category: Literal["alert", "outcome", "command"]
    key: str
    what: str
    topic: str
    value: Mapping[str, Any]
    step: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """A flow-level record of the guardrails (`key: null`): an incident opened or resolved.

    `kind`: incident | incident_resolved; `deviation`/`step`: what it counts; `count`: how
    many (the threshold when it opens, all of them when resolved); `id`: the incident's id,
    as `observer actions list --incident` takes it."""

    kind: str
    deviation: str
    step: str | None
    count: int
    id: str

    def describe(self) -> str:
        where = f" at {self.step}" if self.step else ""
        verb = "opened" if self.kind == "incident" else "resolved"
        return f"{self.deviation}{where} {verb} ({self.count})"


class Incidents:
    """The incident records of a flow, in the order read. The id of an incident is made from
    its opening record (the time of the deviation that opened it); a resolved record gets the
    id of the open incident of its (deviation, step)."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.records: list[IncidentRecord] = []
        self._open: dict[tuple[str, str | None], str] = {}

    def read(self, topic: str, value: Any) -> IncidentRecord | None:
        """The incident record on the alerts topic (kept), or None when `value` is none."""
        if topic != self.topics.alerts or not isinstance(value, dict):
            return None
        kind = value.get("kind")
        if kind not in INCIDENT_KINDS or value.get("key") is not None:
            return None
        from observer.guardrails.gate import incident_id
        from observer.timefmt import parse_time

        raw_step = value.get("step")
        step = str(raw_step) if raw_step is not None else None
        deviation = str(value.get("deviation"))
        count = value.get("count")
        if kind == "incident":
            try:
                opened = parse_time(str(value.get("detected_at")))
            except ValueError:
                opened = 0
            ident = self._open[(deviation, step)] = incident_id(deviation, step, opened)
        else:
            ident = self._open.pop((deviation, step), "")
        rec = IncidentRecord(
            str(kind), deviation, step, count if isinstance(count, int) else 0, ident
        )
        self.records.append(rec)
        return rec

    @property
    def open(self) -> list[str]:
        """The ids of the incidents opened and not resolved yet."""
        return list(self._open.values())

    def same_as(self, other: Incidents) -> bool:
        """The same incidents, opened and resolved, with the same counts (order aside)."""
        return sorted(self.records, key=str) == sorted(other.records, key=str)


class RecordReader:
    """Tells the observer's alerts, outcomes and commands apart by topic, and finds their order."""

    def __init__(self, topics: Topics, command_topics: Iterable[str]) -> None:
        self.topics = topics
        self.command_topics = frozenset(command_topics)

    def read(
        self, topic: str, key: str | None, value: Any, headers: Mapping[str, str]
    ) -> ObserverRecord | None:
        """The record, or None when it is none of the three or names no order."""
        if not isinstance(value, dict):
            return None
        if topic == self.topics.alerts or topic == self.topics.outcomes:
            order = value.get("key")
            if order is None:
                return None
            if topic == self.topics.alerts:
                step = value.get("step")
                return ObserverRecord(
                    "alert",
                    str(order),
                    str(value.get("kind")),
                    topic,
                    value,
                    str(step) if step is not None else None,
                )
            return ObserverRecord("outcome", str(order), str(value.get("outcome")), topic, value)
        if topic in self.command_topics:
            order = key if key is not None else value.get("order_id") or value.get("order_ref")
            if order is None:
                return None
            return ObserverRecord(
                "command", str(order), command_type(value, headers) or topic, topic, value
            )
        return None


@dataclass(slots=True)
class Published:
    """What the observer published about one order, in the order it was published."""

    alerts: list[tuple[str, str | None]] = field(default_factory=list)  # (kind, step)
    commands: list[str] = field(default_factory=list)
    outcome: str | None = None
    held: list[str] = field(default_factory=list)  # actions the guardrails hold (their names)

    def add(self, rec: ObserverRecord) -> None:
        if rec.category == "alert":
            self.alerts.append((rec.what, rec.step))
        elif rec.category == "command":
            self.commands.append(rec.what)
        else:
            self.outcome = rec.what

    def contains(self, other: Published) -> bool:
        """Every alert and command of `other` is here too (as often), and its outcome if any."""
        return (
            not lacking(other.alerts, self.alerts)
            and not lacking(other.commands, self.commands)
            and (other.outcome is None or other.outcome == self.outcome)
        )

    def same_as(self, other: Published) -> bool:
        """The same alerts, commands, held actions and outcome (the order aside)."""
        return (
            self.contains(other)
            and other.contains(self)
            and sorted(self.held) == sorted(other.held)
        )

    def describe(self) -> str:
        """`warning, missing, late at paid -> ReleaseStock, CancelOrder -> cancelled`."""
        groups: list[tuple[list[str], str | None]] = []
        for kind, step in self.alerts:
            if groups and groups[-1][1] == step:
                groups[-1][0].append(kind)
            else:
                groups.append(([kind], step))
        alerts = "; ".join(
            ", ".join(kinds) + (f" at {step}" if step is not None else "") for kinds, step in groups
        )
        parts = [alerts or "no alert"]
        if self.commands:
            parts.append(", ".join(self.commands))
        if self.held:
            parts.append("held " + ", ".join(self.held))
        waiting = "waits for an operator" if self.held else "no outcome yet"
        parts.append(self.outcome or waiting)
        return " -> ".join(parts)


def lacking(wanted: list[Any], have: list[Any]) -> list[Any]:
    """The items of `wanted` that `have` lacks, counting repeats."""
    left = list(have)
    out = []
    for item in wanted:
        if item in left:
            left.remove(item)
        else:
            out.append(item)
    return out
