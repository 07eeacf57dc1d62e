"""What the engine asks the world to do. Adapters carry these out; the engine does no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DeviationRef", "Effect", "Publish", "Signal"]

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
    # guardrails: the deviation of an alert or action record, the action's name, and why a
    # record is held instead of published (set on held copies; see observer/guardrails/)
    deviation: DeviationRef | None = None
    action: str | None = None
    held: str | None = None


@dataclass(slots=True)
class Signal:
    """Something that happened, for metrics and the instance history (nothing is published).

    `what`: started | ended | deviation | recorded | slo; `detail` is the outcome, deviation
    kind, a note, or for `slo` the instance's judgement against its flow's SLO, `good` or `bad`
    (once per instance); `at` is the observer's time (ms).
    """

    what: Literal["started", "ended", "deviation", "recorded", "slo"]
    flow: str
    version: int
    key: str
    detail: str
    step: str | None
    at: int
    value_ms: int | None = None  # duration for `ended` and `slo`


Effect = Publish | Signal
