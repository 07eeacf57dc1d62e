"""The compiler's output: an immutable, index-based flow the engine runs without parsing.

Steps of the main path and of every alternate path share one index space (`CompiledFlow.steps`),
so instance state can refer to a step by a small integer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from observer.flows.selectors import Selector

__all__ = [
    "DEFAULT_GUARDRAILS",
    "MAIN_PATH",
    "CompiledAction",
    "CompiledAlias",
    "CompiledError",
    "CompiledFlow",
    "CompiledGuardrails",
    "CompiledHandler",
    "CompiledPath",
    "CompiledSla",
    "CompiledSlo",
    "CompiledSource",
    "CompiledStep",
    "Renderer",
]

Renderer = Callable[[Mapping[str, Any]], Any]
TimedStep = tuple[int, tuple[int, ...], int, int | None]
Severity = Literal["info", "warning", "critical"]
MAIN_PATH = 0


@dataclass(frozen=True, slots=True)
class CompiledSource:
    """How to read one source: topic, format and compiled selectors."""

    name: str
    topic: str
    format: Literal["json", "avro", "protobuf", "json_schema"]
    avro_schema: Any | None  # parsed fastavro schema, or None (registry / json)
    type: Selector
    key: Selector
    id: Selector | None  # None: topic/partition/offset
    time: Selector
    type_text: str
    key_text: str
    time_text: str
    avro_schema_text: str | None = None  # (issue 16) the local schema as written: the reader
    # schema the registry's Avro deserializer resolves writer schemas to
    via: str | None = None  # aliases: the alias whose values `key` reads (not instance keys)


@dataclass(frozen=True, slots=True)
class CompiledAction:
    """A named action with its templates compiled."""

    name: str
    kind: Literal["publish", "alert", "webhook"]
    topic: Renderer | None = None
    key: Renderer | None = None
    headers: Renderer | None = None
    value: Renderer | None = None
    value_is_mapping: bool = False
    avro_schema: Any | None = None
    severity: Severity | None = None
    summary: Renderer | None = None
    url: str | None = None
    # webhook: extra headers as written (values may hold `${NAME}`), the variable of the key
    webhook_headers: tuple[tuple[str, str], ...] = ()
    sign_secret_env: str | None = None
    # (issue 16) the Confluent wire format: the registry subject of `avro_schema`, and that
    # schema as written (what is looked up, or registered, under the subject)
    subject: str | None = None
    avro_schema_text: str | None = None


@dataclass(frozen=True, slots=True)
class CompiledHandler:
    """Actions in order, an optional path switch, alert on/off and the alert override."""

    actions: tuple[CompiledAction, ...]
    then: int | None  # path index
    alert: bool
    severity: Severity | None  # from the first `alert:` action
    summary: Renderer | None


NO_HANDLER = CompiledHandler((), None, True, None, None)


@dataclass(frozen=True, slots=True)
class CompiledStep:
    """One step: which events satisfy it, its anchors, window and handlers (all in ms)."""

    index: int
    name: str
    path: int
    on: frozenset[tuple[str, str]]  # (source, event type)
    anchors: tuple[int, ...]  # step indices; () = anchored at the path's entry
    within_ms: int | None
    warn_ms: int | None  # offset from the anchor time
    optional: bool
    captures: tuple[tuple[str, Selector], ...]
    if_missing: CompiledHandler = NO_HANDLER
    if_late: CompiledHandler = NO_HANDLER
    if_warning: CompiledHandler = NO_HANDLER
    if_out_of_order: CompiledHandler | None = None  # alerted only when declared
    is_start: bool = False
    shares_on: bool = False  # another step (of another path) expects one of the same events
    dependents: tuple[int, ...] = ()  # steps anchored at this one
    # derived, for the hot path: the captured selectors' names and their dotted parts, in order
    capture_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    capture_parts: tuple[tuple[str, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(sel for sel, _ in self.captures)
        object.__setattr__(self, "capture_names", names)
        object.__setattr__(self, "capture_parts", tuple(tuple(n.split(".")) for n in names))


@dataclass(frozen=True, slots=True)
class CompiledPath:
    index: int
    name: str  # "main" for the main path
    outcome: str
    steps: tuple[int, ...]
    required: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CompiledError:
    index: int
    on: frozenset[tuple[str, str]]
    handler: CompiledHandler


@dataclass(frozen=True, slots=True)
class CompiledSla:
    within_ms: int
    warn_ms: int | None
    if_breached: CompiledHandler
    if_warning: CompiledHandler


@dataclass(frozen=True, slots=True)
class CompiledSlo:
    """`objective` (a ratio, e.g. 0.995) of the instances complete within `within_ms` of their
    start, over `window_ms`. `objective_percent` is the number as written (e.g. "99.5")."""

    objective: float
    objective_percent: str
    within_ms: int
    window_ms: int


@dataclass(frozen=True, slots=True)
class CompiledGuardrails:
    """A flow's guardrails (contract §7), times in ms. An incident opens when `threshold`
    deviations of one (kind, step) fall within `within_ms` (None: no incidents); at most
    `max_actions` action records are published per `per_ms` (None: no limit). The default,
    for a flow without `guardrails:`, has neither."""

    threshold: int | None = None
    within_ms: int = 0
    max_actions: int | None = None
    per_ms: int | None = None

    @property
    def active(self) -> bool:
        """Whether deviations of the flow wait for the guardrails' decision (an incident may
        open or hold them, or their actions count against the rate)."""
        return self.threshold is not None or self.max_actions is not None

    def deferred(self, kind: str) -> bool:
        """Whether a deviation of this kind waits for the guardrails' decision (every kind
        does when the flow has guardrails)."""
        return self.threshold is not None or self.max_actions is not None


DEFAULT_GUARDRAILS = CompiledGuardrails()


@dataclass(frozen=True, slots=True)
class CompiledAlias:
    """A second id of an instance: registered from its `on` events, read with `value`."""

    index: int
    name: str
    on: frozenset[tuple[str, str]]  # (source, event type) of the `from` events
    value: str  # the selector, as written: also the name of its captured value in an event


@dataclass(frozen=True, slots=True)
class CompiledFlow:
    """A validated flow version, ready to run."""

    name: str
    version: int
    file: str
    key_name: str
    sources: Mapping[str, CompiledSource]
    steps: tuple[CompiledStep, ...]
    paths: tuple[CompiledPath, ...]
    errors: tuple[CompiledError, ...]
    sla: CompiledSla | None
    buffer_ms: int
    retain_ms: int
    expire_ms: int
    # (source, type) -> step indices / error indices it matches
    step_index: Mapping[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    error_index: Mapping[tuple[str, str], int] = field(default_factory=dict)
    slo: CompiledSlo | None = None
    # guardrails (contract §7): incidents and the action rate limit
    guardrails: CompiledGuardrails = DEFAULT_GUARDRAILS
    # aliases (correlation by a second id): in declaration order; the indices of those each
    # (source, event type) registers; the top-level handler of `alias_conflict`
    aliases: tuple[CompiledAlias, ...] = ()
    alias_from: Mapping[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    if_alias_conflict: CompiledHandler = NO_HANDLER
    # derived, for the hot path: per path index, the steps that can time out (required, with a
    # window) as (step index, anchors, within_ms, warn_ms | None), in declaration order
    timed: tuple[tuple[TimedStep, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        timed = []
        for path in self.paths:
            timed.append(
                tuple(
                    (i, s.anchors, s.within_ms, s.warn_ms)
                    for i in path.steps
                    if not (s := self.steps[i]).optional and s.within_ms is not None
                )
            )
        object.__setattr__(self, "timed", tuple(timed))

    @property
    def start(self) -> CompiledStep:
        return self.steps[0]

    def alias_named(self, name: str) -> CompiledAlias | None:
        for a in self.aliases:
            if a.name == name:
                return a
        return None

    def step_named(self, name: str) -> CompiledStep:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)
