"""What the engine asks the world to do. Adapters carry these out; the engine does no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from observer.engine.ids import observer_id
from observer.engine.state import Event
from observer.flows.aliases import alias_flow

__all__ = ["HOP_KINDS", "DeviationRef", "Effect", "Hop", "HopKind", "Publish", "Signal"]

Category = Literal["action", "alert", "outcome", "dlq", "webhook"]


# Not frozen (a frozen dataclass is several times slower to build); effects are never mutated.


@dataclass(slots=True)
class DeviationRef:
    """The deviation a record belongs to, for the guardrails (contract §7): its kind, step,
    the flow version of its instance, its time `at` (ms: the timer's due time, or the event
    time of the event that decided it; what incidents and the rate limit count by) and its
    `id` (its alert's observer-id, also when no alert is published: orders ties)."""

    kind: str
    step: str | None
    version: int
    at: int
    id: str


@dataclass(slots=True)
class Publish:
    """A record to publish (or, with `webhook`, a JSON POST of `value` to that URL).

    `value` is a JSON-able object (published as JSON, or Avro with `avro_schema`), a str
    (published as is) or bytes. `observer_id` is also in `headers`. A dead letter keeps its
    source record's key and header values as read: bytes from Kafka (None: no value).
    """

    category: Category
    topic: str | None
    key: str | bytes | None
    value: Any
    headers: tuple[tuple[str, str | bytes | None], ...]
    observer_id: str
    webhook: str | None = None
    avro_schema: Any = None
    # hostile input (issue 12): the value as it is published (JSON, Avro or text), when the
    # engine encoded it to measure the record; None: encoded when published
    encoded: bytes | None = None
    # issue 16: with `avro_schema`, the schema registry subject it is registered under: the
    # value is published in the Confluent wire format (magic byte, schema id, Avro body)
    subject: str | None = None
    # guardrails: the deviation of an alert or action record, the action's name, and why a
    # record is held instead of published (set on held copies; see observer/guardrails/)
    deviation: DeviationRef | None = None
    action: str | None = None
    held: str | None = None


@dataclass(slots=True)
class Signal:
    """Something that happened, for metrics and the instance history (nothing is published).

    `what`: started | ended | deviation | recorded | slo | action_error | dropped; `detail` is
    the outcome, deviation kind, a note, or for `slo` the instance's judgement against its
    flow's SLO, `good` or `bad` (once per instance); for `action_error` (an action that could
    not be carried out) "ACTION: why"; for `dropped` (a budget dropped an early event) why.
    `at` is the observer's time (ms).
    """

    what: Literal["started", "ended", "deviation", "recorded", "slo", "action_error", "dropped"]
    flow: str
    version: int
    key: str
    detail: str
    step: str | None
    at: int
    value_ms: int | None = None  # duration for `ended` and `slo`
    # correlation health: the source of the event concerned (`orphaned`, `alias_conflict`)
    source: str | None = None


# aliases (correlation by a second id): what one slot tells another of the same flow
HopKind = Literal["register", "registered", "conflict", "forward", "bounce", "ended", "free"]
HOP_KINDS: tuple[HopKind, ...] = (
    "register",  # instance -> alias value: the instance asks to hold it
    "registered",  # alias value -> instance: held; with the events that came via it so far
    "conflict",  # alias value -> instance: another open instance holds it (`held_by`)
    "forward",  # alias value -> its holder: an event that came via it
    "bounce",  # instance -> alias value: events for an instance that is gone, sent back
    "ended",  # instance -> alias value: the holder ended (a new open instance may take it)
    "free",  # instance -> alias value: the holder's key is free (after `retain`)
)
_TO_ALIAS = frozenset({"register", "bounce", "ended", "free"})


@dataclass(slots=True)
class Hop:
    """A message from one slot to another of the same flow, between the instance of `key` that
    started at `started` and the alias slot of (`alias`, `value`). Live it travels through the
    keyed topic (kept in the sender's outbox until acknowledged, so it survives a crash); in
    replay it is delivered at once. Handling one twice changes nothing."""

    kind: HopKind
    flow: str
    alias: str
    value: str
    key: str
    started: int
    events: tuple[Event, ...] = ()  # registered, forward, bounce
    held_by: str | None = None  # conflict
    source: str | None = None  # register, conflict: the source of the `from` event

    def target(self) -> tuple[str, str]:
        """(slot flow, slot key) of the receiver: `<flow>/<alias>` and the value, or the
        flow and the instance's key."""
        if self.kind in _TO_ALIAS:
            return alias_flow(self.flow, self.alias), self.value
        return self.flow, self.key

    def id(self) -> str:
        """A deterministic id: the same message sent again (after a crash) has the same one."""
        ids = "\x1e".join(e.id for e in self.events)
        trigger = f"hop:{self.kind}:{self.alias}:{self.value}:{self.started}:{ids}"
        return observer_id(self.flow, 0, self.key, trigger, None, "hop")


Effect = Publish | Signal | Hop
