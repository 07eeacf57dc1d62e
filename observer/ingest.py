"""From a source record to engine events, or to a dead letter. Pure: no I/O.

A record is decoded once per format, then every (flow, source) reading its topic extracts
type, key, id, time and captures with compiled selectors. A record that cannot be decoded, or
that a flow wants but lacks its type, key or time, becomes one dead-letter record.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from observer.engine.core import Topics
from observer.engine.effects import Publish
from observer.engine.ids import observer_id
from observer.engine.state import Event
from observer.flows.compiled import CompiledSource
from observer.flows.registry import FlowRegistry
from observer.flows.selectors import MISSING, RecordView, Selector
from observer.timefmt import parse_time

__all__ = ["Decoded", "Ingest", "SourceRecord"]

Headers = Sequence[tuple[str, Any]] | Mapping[str, Any]


@dataclass(slots=True)
class SourceRecord:
    """A record as read from a topic. `value`/`key` are bytes from Kafka; replay may pass a
    decoded JSON object or a str. Header values are bytes or str."""

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    headers: Headers
    timestamp: int


@dataclass(slots=True)
class Decoded:
    """What a record yields: (flow name, event) pairs and at most one dead letter."""

    events: list[tuple[str, Event]] = field(default_factory=list)
    dead_letter: Publish | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class _Reader:
    flow: str
    source: CompiledSource
    wanted: frozenset[str]  # event types some version of the flow reacts to
    captures: Mapping[str, tuple[tuple[str, Selector], ...]]  # type -> capture selectors


AvroDecoder = Callable[[bytes, CompiledSource], Any]


def _local_avro(data: bytes, source: CompiledSource) -> Any:
    import fastavro

    if source.avro_schema is None:
        raise ValueError("no Avro schema for this source (set schema: or a schema registry)")
    return fastavro.schemaless_reader(io.BytesIO(data), source.avro_schema)


class Ingest:
    """Decodes source records for every deployed flow. Rebuild it when flows are deployed."""

    def __init__(
        self, registry: FlowRegistry, topics: Topics | None = None, avro: AvroDecoder | None = None
    ) -> None:
        self.topics = topics or Topics()
        self.avro = avro or _local_avro
        readers: dict[str, dict[tuple[str, str], _Reader]] = {}
        wanted: dict[tuple[str, str], set[str]] = {}
        caps: dict[tuple[str, str], dict[str, dict[str, Selector]]] = {}
        for flow in registry:
            for step in flow.steps:
                for src, etype in step.on:
                    wanted.setdefault((flow.name, src), set()).add(etype)
                    per_type = caps.setdefault((flow.name, src), {}).setdefault(etype, {})
                    per_type.update(dict(step.captures))
            for err in flow.errors:
                for src, etype in err.on:
                    wanted.setdefault((flow.name, src), set()).add(etype)
        for flow in registry.newest_flows() + list(registry):
            for source in flow.sources.values():
                slot = readers.setdefault(source.topic, {})
                if (flow.name, source.name) not in slot:
                    c = caps.get((flow.name, source.name), {})
                    slot[(flow.name, source.name)] = _Reader(
                        flow.name,
                        source,
                        frozenset(wanted.get((flow.name, source.name), ())),
                        {t: tuple(sel.items()) for t, sel in c.items()},
                    )
        self._readers = {t: tuple(r.values()) for t, r in readers.items()}

    def topic_names(self) -> list[str]:
        return sorted(self._readers)

    def decode(self, rec: SourceRecord) -> Decoded:
        """Decode one record into events for the flows that want it, or a dead letter."""
        out = Decoded()
        readers = self._readers.get(rec.topic)
        if not readers:
            return out
        headers = rec.headers if isinstance(rec.headers, Mapping) else dict(rec.headers)
        values: dict[str, Any] = {}
        for r in readers:
            fmt = r.source.format
            if fmt not in values:
                try:
                    values[fmt] = self._decode_value(rec.value, r.source)
                except Exception as exc:
                    return self._dead(rec, f"cannot decode {fmt} value: {exc}")
            view = RecordView(values[fmt], headers, rec.key, rec.timestamp)
            etype = r.source.type(view)
            if etype is MISSING or etype is None or isinstance(etype, dict | list) or etype == "":
                return self._dead(rec, f"no event type at {r.source.type_text}")
            etype = str(etype)
            if etype not in r.wanted:
                continue
            key = r.source.key(view)
            if key is MISSING or key is None or isinstance(key, dict | list | bool) or key == "":
                return self._dead(rec, f"no correlation key at {r.source.key_text}")
            raw_time = r.source.time(view)
            if raw_time is MISSING:
                return self._dead(rec, f"no event time at {r.source.time_text}")
            try:
                time = parse_time(raw_time)
            except ValueError as exc:
                return self._dead(rec, f"bad event time at {r.source.time_text}: {exc}")
            eid: Any = MISSING
            if r.source.id is not None:
                eid = r.source.id(view)
            if eid is MISSING or eid is None or isinstance(eid, dict | list):
                eid = f"{rec.topic}/{rec.partition}/{rec.offset}"
            captures = {}
            for sel, fn in r.captures.get(etype, ()):
                v = fn(view)
                captures[sel] = None if v is MISSING else v
            out.events.append(
                (r.flow, Event(r.source.name, etype, str(key), str(eid), time, captures))
            )
        return out

    def _decode_value(self, value: Any, source: CompiledSource) -> Any:
        if source.format == "json":
            if isinstance(value, bytes | bytearray | memoryview | str):
                return orjson.loads(value)
            return value
        if isinstance(value, str):
            value = base64.b64decode(value, validate=True)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueError("an Avro value must be bytes (base64 text in replay)")
        return self.avro(bytes(value), source)

    def _dead(self, rec: SourceRecord, reason: str) -> Decoded:
        where = f"{rec.topic}/{rec.partition}/{rec.offset}"
        oid = observer_id("", 0, "", where, None, "dlq")
        original = (
            list(rec.headers.items()) if isinstance(rec.headers, Mapping) else list(rec.headers)
        )
        headers = (
            *tuple((str(k), v) for k, v in original),
            ("observer-error", reason),
            ("observer-source-topic", rec.topic),
            ("observer-source-partition", str(rec.partition)),
            ("observer-source-offset", str(rec.offset)),
            ("observer-id", oid),
        )
        dl = Publish("dlq", self.topics.dlq, rec.key, rec.value, headers, oid)
        return Decoded([], dl, reason)
