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
from observer.timefmt import MAX_TIME_MS, MIN_TIME_MS, parse_time

__all__ = ["Decoded", "Ingest", "SourceRecord", "dead_letter"]

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
        raw_headers = rec.headers
        kind = type(raw_headers)
        if kind is list or kind is tuple:  # confluent-kafka's [(name, bytes), ...]
            headers: Mapping[str, Any] = dict(raw_headers)
        elif kind is dict or isinstance(raw_headers, Mapping):  # no ABC check for a dict
            headers = raw_headers  # type: ignore[assignment]
        else:
            headers = dict(raw_headers)
        view: RecordView | None = None
        view_fmt = ""
        views: dict[str, RecordView] | None = None
        for r in readers:
            source = r.source
            fmt = source.format
            if view is None:
                try:
                    value = self._decode_value(rec.value, source)
                except Exception as exc:
                    return self._dead(rec, f"cannot decode {fmt} value: {exc}")
                view = RecordView(value, headers, rec.key, rec.timestamp)
                view_fmt = fmt
            elif fmt != view_fmt:  # another flow reads this topic in another format
                if views is None:
                    views = {view_fmt: view}
                other = views.get(fmt)
                if other is None:
                    try:
                        value = self._decode_value(rec.value, source)
                    except Exception as exc:
                        return self._dead(rec, f"cannot decode {fmt} value: {exc}")
                    other = views[fmt] = RecordView(value, headers, rec.key, rec.timestamp)
                view, view_fmt = other, fmt
            etype = source.type(view)
            if type(etype) is str:  # the usual case, checked first
                if etype == "":
                    return self._dead(rec, f"no event type at {source.type_text}")
            elif etype is MISSING or etype is None or isinstance(etype, dict | list):
                return self._dead(rec, f"no event type at {source.type_text}")
            else:
                etype = str(etype)
            if etype not in r.wanted:
                continue
            key = source.key(view)
            if type(key) is str:
                if key == "":
                    return self._dead(rec, f"no correlation key at {source.key_text}")
            elif key is MISSING or key is None or isinstance(key, dict | list | bool):
                return self._dead(rec, f"no correlation key at {source.key_text}")
            else:
                key = str(key)
            raw_time = source.time(view)
            if type(raw_time) is int and MIN_TIME_MS <= raw_time < MAX_TIME_MS:
                time = raw_time
            else:
                if raw_time is MISSING:
                    return self._dead(rec, f"no event time at {source.time_text}")
                try:
                    time = parse_time(raw_time)
                except ValueError as exc:
                    return self._dead(rec, f"bad event time at {source.time_text}: {exc}")
            eid: Any = MISSING if source.id is None else source.id(view)
            if type(eid) is not str:
                if eid is MISSING or eid is None or isinstance(eid, dict | list):
                    eid = f"{rec.topic}/{rec.partition}/{rec.offset}"
                else:
                    eid = str(eid)
            sels = r.captures.get(etype)
            captures: dict[str, Any] = {}
            if sels:
                for sel, fn in sels:
                    v = fn(view)
                    captures[sel] = None if v is MISSING else v
            out.events.append((r.flow, Event(source.name, etype, key, eid, time, captures)))
        return out

    def _decode_value(self, value: Any, source: CompiledSource) -> Any:
        if source.format == "json":
            if type(value) is bytes or isinstance(value, bytes | bytearray | memoryview | str):
                return orjson.loads(value)
            return value
        if isinstance(value, str):
            value = base64.b64decode(value, validate=True)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueError("an Avro value must be bytes (base64 text in replay)")
        return self.avro(bytes(value), source)

    def _dead(self, rec: SourceRecord, reason: str) -> Decoded:
        return Decoded([], dead_letter(rec, reason, self.topics), reason)


def dead_letter(rec: SourceRecord, reason: str, topics: Topics) -> Publish:
    """The dead letter of a record: its original key, value and headers, plus the observer's
    headers (the reason and where it was read); its observer-id depends only on where."""
    where = f"{rec.topic}/{rec.partition}/{rec.offset}"
    oid = observer_id("", 0, "", where, None, "dlq")
    original = list(rec.headers.items()) if isinstance(rec.headers, Mapping) else list(rec.headers)
    headers = (
        *tuple((str(k), v) for k, v in original),
        ("observer-error", reason),
        ("observer-source-topic", rec.topic),
        ("observer-source-partition", str(rec.partition)),
        ("observer-source-offset", str(rec.offset)),
        ("observer-id", oid),
    )
    return Publish("dlq", topics.dlq, rec.key, rec.value, headers, oid)
