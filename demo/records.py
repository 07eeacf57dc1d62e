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

__all__ = ["ObserverRecord", "Published", "RecordReader", "command_type", "lacking"]


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
        """The same alerts, commands and outcome (the order of publication aside)."""
        return self.contains(other) and other.contains(self)

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
        parts.append(self.outcome or "no outcome yet")
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
