"""What the engine asks the world to do. Adapters carry these out; the engine does no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Effect", "Publish", "Signal"]

Category = Literal["action", "alert", "outcome", "dlq", "webhook"]


# Not frozen (a frozen dataclass is several times slower to build); effects are never mutated.


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
