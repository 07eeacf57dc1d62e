"""Pydantic models of a flow file as written (`FlowSpec`), before compilation.

These models check shape and the syntax of single values (names, durations, selectors);
cross-references (sources, steps, actions, paths, templates) are checked by the compiler,
which has the whole flow in view. `schemas/flow.schema.json` is generated from `FlowSpec`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from observer.limits import MAX_ACTIONS_COUNT, MAX_INCIDENT_THRESHOLD, MAX_VERSION
from observer.timefmt import parse_duration

__all__ = [
    "ALIAS_NAME",
    "SELECTOR",
    "ActionSpec",
    "AlertSpec",
    "AliasSpec",
    "ErrorSpec",
    "FlowSpec",
    "GuardrailsSpec",
    "HandlerSpec",
    "IncidentSpec",
    "MaxActionsSpec",
    "PathSpec",
    "PublishSpec",
    "SignSpec",
    "SlaSpec",
    "SloSpec",
    "SourceSpec",
    "StepSpec",
    "WebhookSpec",
    "check_selector",
]

FLOW_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ACTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
EVENT_REF = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\.(\S+)$")
SELECTOR = re.compile(r"^(key|timestamp|header\.[^.\s][^\s]*|value(\.[^.\s]+)*)$")
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # aliases (correlation by a second id)
Severity = Literal["info", "warning", "critical"]


def check_selector(text: str) -> str:
    """Return `text` if it is a valid selector, else raise ValueError saying what is allowed."""
    if not isinstance(text, str) or not SELECTOR.match(text):
        raise ValueError(
            f"'{text}' is not a selector (use value.a.b, value.items.0.sku, header.NAME, key "
            "or timestamp)"
        )
    return text


def _check_duration(text: str | None) -> str | None:
    if text is not None:
        parse_duration(str(text))
    return text


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class SourceSpec(_Model):
    """Where events come from and how to read their type, key, id and time."""

    topic: str = Field(min_length=1, description="Kafka topic to read")
    format: Literal["json", "avro", "protobuf", "json_schema"] = Field(
        "json",
        description="value encoding: json, or avro, protobuf or json_schema in the Confluent "
        "wire format (schemas from the schema registry; avro also plain with a local schema)",
    )
    schema_: str | None = Field(
        None, alias="schema", description="avro only: path of a local .avsc schema"
    )
    type: str = Field(description="selector of the event type, e.g. value.type or header.ce_type")
    key: str = Field("key", description="selector of the correlation key (default: record key)")
    id: str | None = Field(
        None, description="selector of a unique event id (default: topic/partition/offset)"
    )
    time: str = Field("timestamp", description="selector of event time: epoch ms or ISO-8601")
    # aliases (correlation by a second id)
    via: str | None = Field(
        None,
        description="an alias name: `key` reads values of that alias, not instance keys "
        "(such a source cannot start an instance)",
    )

    _selectors = field_validator("type", "key", "id", "time")(
        classmethod(lambda cls, v: v if v is None else check_selector(v))
    )

    @field_validator("via")
    @classmethod
    def _via(cls, v: str | None) -> str | None:
        if v is not None and not ALIAS_NAME.match(v):
            raise ValueError(f"via '{v}' is not an alias name ({ALIAS_NAME.pattern})")
        return v

    @model_validator(mode="after")
    def _avro_needs_no_schema_for_json(self) -> SourceSpec:
        if self.format != "avro" and self.schema_ is not None:
            raise ValueError("'schema' is only for format: avro")
        return self


class HandlerSpec(_Model):
    """What to do on a deviation: actions in order, an optional path switch, alert on/off.

    Written either as a list of action names or as `{do: [...], then: PATH, alert: bool}`.
    """

    do: list[str] = Field(default_factory=list, description="action names, run in order")
    then: str | None = Field(None, description="switch the instance to this alternate path")
    alert: bool = Field(True, description="publish the alert record (default true)")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, list | str):
            return {"do": _as_list(value)}
        if isinstance(value, dict) and isinstance(value.get("do"), str):
            return {**value, "do": [value["do"]]}
        return value


class StepSpec(_Model):
    """One expected event of a path, with its anchor(s), window and handlers."""

    step: str = Field(description="step name, an identifier unique in the flow")
    on: list[str] = Field(
        min_length=1, description="<source>.<EventType>; a list means any of them"
    )
    after: list[str] | None = Field(
        None, description="anchor step(s); default: the previous required step; [] = path entry"
    )
    within: str | None = Field(None, description="deadline after the latest anchor (a duration)")
    warn: str | None = Field(
        None, description="early warning: a percentage of within, or a duration"
    )
    optional: bool = Field(False, description="not required; never missing or warning")
    capture: list[str] = Field(default_factory=list, description="selectors kept for templates")
    if_missing: HandlerSpec | None = None
    if_late: HandlerSpec | None = None
    if_warning: HandlerSpec | None = None
    if_out_of_order: HandlerSpec | None = None

    _lists = field_validator("on", "after", "capture", mode="before")(
        classmethod(lambda cls, v: _as_list(v))
    )
    _durations = field_validator("within")(classmethod(lambda cls, v: _check_duration(v)))

    @field_validator("step")
    @classmethod
    def _name(cls, v: str) -> str:
        if not IDENT.match(v):
            raise ValueError(f"step name '{v}' must be an identifier (letters, digits, _)")
        return v

    @field_validator("on")
    @classmethod
    def _refs(cls, v: list[str]) -> list[str]:
        for ref in v:
            if not EVENT_REF.match(ref):
                raise ValueError(f"'{ref}' is not <source>.<EventType>")
        return v

    @field_validator("capture")
    @classmethod
    def _captures(cls, v: list[str]) -> list[str]:
        return [check_selector(s) for s in v]

    @field_validator("warn", mode="before")
    @classmethod
    def _warn(cls, v: Any) -> Any:
        if v is None:
            return v
        text = str(v).strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                raise ValueError(f"warn '{v}' is not a percentage like 80%") from None
            if not 0 < pct < 100:
                raise ValueError(f"warn '{v}' must be between 0% and 100%")
            return text
        _check_duration(text)
        return text


class ErrorSpec(_Model):
    """A known error event, observed at any time while the instance is open."""

    on: list[str] = Field(min_length=1, description="<source>.<EventType>; a list means any")
    do: list[str] = Field(default_factory=list, description="action names, run in order")
    then: str | None = Field(None, description="switch the instance to this alternate path")
    alert: bool = True

    _lists = field_validator("on", "do", mode="before")(classmethod(lambda cls, v: _as_list(v)))
    _refs = field_validator("on")(classmethod(lambda cls, v: StepSpec._refs(v)))

    def handler(self) -> HandlerSpec:
        return HandlerSpec(do=self.do, then=self.then, alert=self.alert)


class PathSpec(_Model):
    """An alternate flow entered by `then:`; completing it ends the instance with `outcome`."""

    outcome: str = Field(min_length=1)
    steps: list[StepSpec] = Field(default_factory=list)


class SlaSpec(_Model):
    """The whole instance's window, from its start event."""

    within: str
    warn: str | None = None
    if_breached: HandlerSpec | None = None
    if_warning: HandlerSpec | None = None

    _durations = field_validator("within")(classmethod(lambda cls, v: _check_duration(v)))
    _warn = field_validator("warn", mode="before")(classmethod(lambda cls, v: StepSpec._warn(v)))


class SloSpec(_Model):
    """A service level objective: `objective` of the instances complete within `within` of
    their start event, measured over `window` (docs/monitoring.md)."""

    objective: str = Field(description="a percentage strictly between 0% and 100%, e.g. 99.5%")
    within: str = Field(description="good: completed this long after the start event at most")
    window: str = Field("28d", description="the period the objective holds over (default 28d)")

    _durations = field_validator("within", "window")(classmethod(lambda cls, v: _check_duration(v)))

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        text = str(v).strip()
        if not text.endswith("%"):
            raise ValueError(f"objective '{v}' is not a percentage like 99.5%")
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"objective '{v}' is not a percentage like 99.5%") from None
        if not 0 < pct < 100:
            raise ValueError(f"objective '{v}' must be between 0% and 100% (both excluded)")
        return text


class PublishSpec(_Model):
    """A record to publish; every string in it may be a template."""

    topic: str = Field(min_length=1)
    key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    value: Any = None
    schema_: str | None = Field(None, alias="schema", description="publish the value as Avro")
    subject: str | None = Field(
        None,
        min_length=1,
        description="with schema: publish in the Confluent wire format, the schema's id "
        "being the one registered under this subject of the schema registry",
    )

    @model_validator(mode="after")
    def _subject_needs_a_schema(self) -> PublishSpec:
        if self.subject is not None and self.schema_ is None:
            raise ValueError("'subject' needs 'schema' (the .avsc the value is encoded with)")
        return self


class AlertSpec(_Model):
    """Sets severity and summary of the deviation's alert record."""

    severity: Severity | None = Field(None, description="default: the deviation kind's severity")
    summary: str | None = None


class SignSpec(_Model):
    """Sign the body: `X-Observer-Signature: sha256=<hex HMAC-SHA256 of the body>`."""

    secret: str = Field(
        description="the key, from the environment: `${NAME}` (never written in the flow)"
    )


class WebhookSpec(_Model):
    """POST the deviation's alert record as JSON to `url` (http or https)."""

    url: str = Field(min_length=1, description="http:// or https:// URL")
    severity: Severity | None = None
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="extra request headers; `${NAME}` in a value is the environment variable NAME",
    )
    sign: SignSpec | None = None


class ActionSpec(_Model):
    """Exactly one of publish, alert or webhook."""

    publish: PublishSpec | None = None
    alert: AlertSpec | None = None
    webhook: WebhookSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ActionSpec:
        given = [n for n in ("publish", "alert", "webhook") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("an action has exactly one of publish, alert or webhook")
        return self


class AliasSpec(_Model):
    """A second id an instance is known by: registered when one of the `from` events is applied
    to an open instance, its value read from that event with `value`."""

    from_: list[str] = Field(
        alias="from",
        min_length=1,
        description="<source>.<EventType> (or a list) of the instance that carries the value; "
        "a source without `via`",
    )
    value: str = Field(description="selector of the alias value in that event")

    _lists = field_validator("from_", mode="before")(classmethod(lambda cls, v: _as_list(v)))
    _refs = field_validator("from_")(classmethod(lambda cls, v: StepSpec._refs(v)))
    _value = field_validator("value")(classmethod(lambda cls, v: check_selector(v)))


class IncidentSpec(_Model):
    """A storm of one deviation kind at one step opens an incident (contract §7)."""

    threshold: int = Field(
        ge=2,
        le=MAX_INCIDENT_THRESHOLD,
        description="this many deviations of one kind at one step open an incident",
    )
    within: str = Field(description="... detected within this much watermark time (a duration)")

    _durations = field_validator("within")(classmethod(lambda cls, v: _check_duration(v)))


class MaxActionsSpec(_Model):
    """At most `count` action records per `per` (watermark time, per flow); the rest are held."""

    count: int = Field(ge=1, le=MAX_ACTIONS_COUNT, description="action records per interval")
    per: str = Field(description="the interval (a duration)")

    _durations = field_validator("per")(classmethod(lambda cls, v: _check_duration(v)))


class GuardrailsSpec(_Model):
    """Storms and rate limits: incidents hold their deviations' actions, `max_actions` holds
    what is beyond the rate (docs/flow-language.md, Guardrails)."""

    incident: IncidentSpec | None = None
    max_actions: MaxActionsSpec | None = None


class FlowSpec(_Model):
    """One flow file document, as written."""

    flow: str = Field(description="flow name, ^[a-z][a-z0-9_-]{0,63}$")
    version: int = Field(
        ge=1, le=MAX_VERSION, description="instances keep the version they started with"
    )
    description: str | None = None
    key: str = Field("key", description="name of the correlation key in templates")
    sources: dict[str, SourceSpec] = Field(min_length=1)
    steps: list[StepSpec] = Field(min_length=1)
    errors: list[ErrorSpec] = Field(default_factory=list)
    paths: dict[str, PathSpec] = Field(default_factory=dict)
    sla: SlaSpec | None = None
    slo: SloSpec | None = None
    buffer: str = "5m"
    retain: str = "7d"
    expire: str = "30d"
    actions: dict[str, ActionSpec] = Field(default_factory=dict)
    # aliases (correlation by a second id)
    aliases: dict[str, AliasSpec] = Field(
        default_factory=dict, description="other ids an instance is known by, by name"
    )
    if_alias_conflict: HandlerSpec | None = Field(
        None, description="an open instance registers an alias value another open one holds"
    )
    # guardrails (contract §7): incidents, the action rate limit
    guardrails: GuardrailsSpec | None = None

    _durations = field_validator("buffer", "retain", "expire", mode="before")(
        classmethod(lambda cls, v: _check_duration(str(v)) if v is not None else v)
    )

    @field_validator("flow")
    @classmethod
    def _flow_name(cls, v: str) -> str:
        if not FLOW_NAME.match(v):
            raise ValueError(f"flow name '{v}' must match ^[a-z][a-z0-9_-]{{0,63}}$")
        return v

    @field_validator("sources", "paths")
    @classmethod
    def _identifiers(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not IDENT.match(name):
                raise ValueError(f"name '{name}' must be an identifier (letters, digits, _)")
        return v

    @field_validator("actions")
    @classmethod
    def _action_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not ACTION_NAME.match(name):
                raise ValueError(f"action name '{name}' must be letters, digits, _ or -")
        return v

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not ALIAS_NAME.match(name):
                raise ValueError(f"alias name '{name}' must match {ALIAS_NAME.pattern}")
        return v

    @field_validator("key")
    @classmethod
    def _key_name(cls, v: str) -> str:
        if not IDENT.match(v):
            raise ValueError(f"key name '{v}' must be an identifier")
        return v
