"""How a shop event looks on Kafka, derived from the flow's own `sources:` selectors. Pure.

The simulator thinks in `ShopEvent`s (which service announced what about which order, and
when). `WireFormat` turns one into the Kafka record the flow expects to read, by inverting
each selector of the event's source: `value.a.b` sets a field of the JSON value,
`header.NAME` sets a header, `key` is the record key and `timestamp` the record timestamp.
So when `flows/checkout.yaml` moves the event type from a field to a header, the demo follows
without a code change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from observer.flows.spec import SourceSpec
from observer.timefmt import format_time

__all__ = ["DemoError", "ShopEvent", "WireFormat", "WireRecord"]


class DemoError(Exception):
    """The demo cannot run as configured (the message says why and what to do)."""


@dataclass(frozen=True, slots=True)
class ShopEvent:
    """A fact a shop service announces. `time_ms` is the event time (epoch ms)."""

    source: str  # the flow's source name, e.g. "payments"
    type: str  # e.g. "PaymentCaptured"
    order_id: str
    event_id: str
    time_ms: int
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WireRecord:
    """A record ready for the producer: JSON value, UTF-8 headers, timestamp in epoch ms."""

    topic: str
    key: str
    value: dict[str, Any]
    headers: tuple[tuple[str, str], ...]
    timestamp: int


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one selector puts its datum: in the value (`path`), a header, or the record."""

    kind: str  # "value" | "header" | "key" | "timestamp"
    path: tuple[str, ...] = ()


def _slot(source: str, role: str, text: str) -> _Slot:
    if text == "key":
        return _Slot("key")
    if text == "timestamp":
        return _Slot("timestamp")
    if text.startswith("header."):
        return _Slot("header", (text[len("header.") :],))
    parts = tuple(text.split(".")[1:])
    if not parts or any(p.lstrip("-").isdigit() for p in parts):
        raise DemoError(f"source '{source}': the demo cannot write a {role} at '{text}'")
    return _Slot("value", parts)


def _put(value: dict[str, Any], path: tuple[str, ...], datum: Any) -> None:
    node = value
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = datum


@dataclass(frozen=True, slots=True)
class _SourceWire:
    topic: str
    type: _Slot
    key: _Slot
    id: _Slot | None
    time: _Slot


class WireFormat:
    """Encodes `ShopEvent`s for the flow's sources (JSON sources only)."""

    def __init__(self, sources: Mapping[str, SourceSpec]) -> None:
        self._sources: dict[str, _SourceWire] = {}
        for name, spec in sources.items():
            if spec.format != "json":
                raise DemoError(f"source '{name}' is {spec.format}; the demo writes JSON only")
            wire = _SourceWire(
                topic=spec.topic,
                type=_slot(name, "type", spec.type),
                key=_slot(name, "key", spec.key),
                id=_slot(name, "id", spec.id) if spec.id is not None else None,
                time=_slot(name, "time", spec.time),
            )
            if wire.type.kind in ("key", "timestamp"):
                raise DemoError(
                    f"source '{name}': the demo cannot write the event type as '{spec.type}'"
                )
            if wire.key.kind == "timestamp" or (
                wire.id is not None and wire.id.kind == "timestamp"
            ):
                raise DemoError(f"source '{name}': a key or id read from the record timestamp")
            self._sources[name] = wire

    @property
    def sources(self) -> list[str]:
        return sorted(self._sources)

    def topic(self, source: str) -> str:
        return self._sources[source].topic

    @property
    def topics(self) -> list[str]:
        """Every shop topic the flow reads."""
        return sorted({w.topic for w in self._sources.values()})

    def encode(self, event: ShopEvent) -> WireRecord:
        """The Kafka record of `event`: the record key is always the order id (so one order's
        events of a topic stay on one partition), the record timestamp always the event time."""
        try:
            wire = self._sources[event.source]
        except KeyError:
            raise DemoError(f"the flow has no source '{event.source}'") from None
        value: dict[str, Any] = {k: v for k, v in event.data.items()}
        headers: dict[str, str] = {}

        def place(slot: _Slot, datum: Any) -> None:
            if slot.kind == "value":
                _put(value, slot.path, datum)
            elif slot.kind == "header":
                headers[slot.path[0]] = str(datum)

        place(wire.type, event.type)
        place(wire.key, event.order_id)
        if wire.id is not None:
            place(wire.id, event.event_id)
        place(wire.time, format_time(event.time_ms))
        return WireRecord(
            topic=wire.topic,
            key=event.order_id,
            value=value,
            headers=tuple(sorted(headers.items())),
            timestamp=event.time_ms,
        )
