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

from observer.engine.effects import Publish
from observer.engine.ids import observer_id
from observer.engine.state import Event
from observer.flows.aliases import alias_flow
from observer.flows.compiled import CompiledSource
from observer.flows.registry import FlowRegistry
from observer.flows.selectors import MISSING, RecordView, Selector, compile_selector
from observer.jsonexact import INT_MAX, INT_MIN, loads_exact, may_be_rounded
from observer.timefmt import MAX_TIME_MS, MIN_TIME_MS, parse_time
from observer.topics import Topics

__all__ = [
    "AvroDecoder",
    "Decoded",
    "Ingest",
    "SourceRecord",
    "ValueDecoder",
    "dead_letter",
    "local_decoder",
]

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
    # correlation health (issue 16): the dead letter's reason as a short code
    # (`correlation.DEAD_LETTER_REASONS`) and the (flow, source) that found it, if one did
    code: str | None = None
    source: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class _Reader:
    flow: str  # where its events go: the flow, or `<flow>/<alias>` for a `via` source
    source: CompiledSource
    wanted: frozenset[str]  # event types some version of the flow reacts to
    captures: Mapping[str, tuple[tuple[str, Selector], ...]]  # type -> capture selectors


# Reads a value of a registry format (avro, protobuf, json_schema) from its bytes; raises on
# a value it cannot read (an error with a `code` attribute names the dead letter's reason).
ValueDecoder = Callable[[bytes, CompiledSource], Any]
AvroDecoder = ValueDecoder  # its name before protobuf and json_schema


def local_decoder(data: bytes, source: CompiledSource) -> Any:
    """Without a schema registry: Avro read schemaless with the source's local schema."""
    import fastavro

    if source.format != "avro":
        raise ValueError(f"no schema registry to read {source.format} (its wire format)")
    if source.avro_schema is None:
        raise ValueError("no Avro schema for this source (set schema: or a schema registry)")
    return fastavro.schemaless_reader(io.BytesIO(data), source.avro_schema)


class Ingest:
    """Decodes source records for every deployed flow. Rebuild it when flows are deployed."""

    def __init__(
        self,
        registry: FlowRegistry,
        topics: Topics | None = None,
        decoder: ValueDecoder | None = None,
    ) -> None:
        self.topics = topics or Topics()
        self.decoder = decoder or local_decoder
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
            for alias in flow.aliases:  # a `from` event carries the alias value: captured
                for src, etype in alias.on:
                    wanted.setdefault((flow.name, src), set()).add(etype)
                    per_type = caps.setdefault((flow.name, src), {}).setdefault(etype, {})
                    per_type[alias.value] = compile_selector(alias.value)
        for flow in registry.newest_flows() + list(registry):
            for source in flow.sources.values():
                slot = readers.setdefault(source.topic, {})
                if (flow.name, source.name) not in slot:
                    c = caps.get((flow.name, source.name), {})
                    slot[(flow.name, source.name)] = _Reader(
                        flow.name if source.via is None else alias_flow(flow.name, source.via),
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
                    return self._undecodable(rec, fmt, exc)
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
                        return self._undecodable(rec, fmt, exc)
                    other = views[fmt] = RecordView(value, headers, rec.key, rec.timestamp)
                view, view_fmt = other, fmt
            try:
                etype = source.type(view)
                if type(etype) is not str or not etype:
                    etype = _text_of(etype, _NO_TYPE, source.type_text, source, source.type, rec)
                if etype not in r.wanted:
                    continue
                key = source.key(view)
                if type(key) is not str or not key:
                    key = _text_of(key, _NO_KEY, source.key_text, source, source.key, rec)
                eid: Any = MISSING if source.id is None else source.id(view)
                if type(eid) is not str:
                    eid = _event_id(eid, source, rec)
            except _Dead as dead:
                return self._dead(rec, dead.reason, dead.code, (r.flow, source.name))
            raw_time = source.time(view)
            if type(raw_time) is int and MIN_TIME_MS <= raw_time < MAX_TIME_MS:
                time = raw_time
            else:
                where = (r.flow, source.name)
                if raw_time is MISSING:
                    return self._dead(rec, f"no event time at {source.time_text}", "no_time", where)
                try:
                    time = parse_time(raw_time)
                except ValueError as exc:
                    reason = f"bad event time at {source.time_text}: {exc}"
                    return self._dead(rec, reason, "no_time", where)
            sels = r.captures.get(etype)
            captures: dict[str, Any] = {}
            if sels:
                raw = rec.value  # bytes from Kafka; replay passes decoded JSON
                decoded = type(raw) is not bytes and not isinstance(raw, _ENCODED)
                for sel, fn in sels:
                    v = fn(view)
                    if v is MISSING:
                        v = None
                    elif decoded:
                        v = _as_orjson_reads(v)
                    captures[sel] = v
            out.events.append((r.flow, Event(source.name, etype, key, eid, time, captures)))
        return out

    def _decode_value(self, value: Any, source: CompiledSource) -> Any:
        if source.format == "json":
            if type(value) is bytes or isinstance(value, bytes | bytearray | memoryview | str):
                return orjson.loads(value)
            return value
        if source.format != "avro" and not isinstance(value, _ENCODED):
            return value  # protobuf, json_schema: already decoded (replay's JSON objects)
        if isinstance(value, str):
            value = base64.b64decode(value, validate=True)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueError("an Avro value must be bytes (base64 text in replay)")
        return self.decoder(bytes(value), source)

    def _dead(
        self, rec: SourceRecord, reason: str, code: str, where: tuple[str, str] | None = None
    ) -> Decoded:
        return Decoded([], dead_letter(rec, reason, self.topics), reason, code, where)

    def _undecodable(self, rec: SourceRecord, fmt: str, exc: Exception) -> Decoded:
        """A value that cannot be decoded; a decoder's error may name its own reason code
        (`code`, e.g. `schema` for a schema the registry would not give)."""
        code = getattr(exc, "code", None)
        return self._dead(
            rec, f"cannot decode {fmt} value: {exc}", code if type(code) is str else "undecodable"
        )


class _Dead(Exception):
    """A record goes to the dead-letter topic for `reason` (`code`: its short form)."""

    def __init__(self, reason: str, code: str) -> None:
        self.reason = reason
        self.code = code


_ENCODED = (bytes, bytearray, memoryview, str)
# what is missing; whether a boolean counts as text; the reason code
_NO_TYPE = ("no event type", True, "no_type")
_NO_KEY = ("no correlation key", False, "no_key")


def _exact(source: CompiledSource, selector: Selector, rec: SourceRecord) -> Any:
    """What `selector` reads from `rec` with its JSON value decoded again keeping integers of
    any size exact (orjson rounds those beyond 64 bits to floats, merging distinct keys)."""
    value = rec.value
    if source.format != "json":
        return selector(RecordView(value, {}, rec.key, rec.timestamp))
    if isinstance(value, _ENCODED):
        value = loads_exact(value)
    headers = rec.headers if isinstance(rec.headers, Mapping) else dict(rec.headers)
    return selector(RecordView(value, headers, rec.key, rec.timestamp))


def _text_of(
    value: Any,
    what: tuple[str, bool, str],
    where: str,
    source: CompiledSource,
    selector: Selector,
    rec: SourceRecord,
) -> str:
    """A type or key that is not a non-empty string, as text; raises _Dead if there is none.
    A number is its exact decimal text, also beyond 64 bits."""
    if may_be_rounded(value):
        value = _exact(source, selector, rec)
    if type(value) is str:
        if value:
            return value
    elif not (value is MISSING or value is None or isinstance(value, dict | list)) and (
        what[1] or not isinstance(value, bool)
    ):
        return str(value)
    raise _Dead(f"{what[0]} at {where}", what[2])


def _event_id(value: Any, source: CompiledSource, rec: SourceRecord) -> str:
    """The event id read, as exact text; topic/partition/offset when there is none."""
    if source.id is not None and may_be_rounded(value):
        value = _exact(source, source.id, rec)
    if value is MISSING or value is None or isinstance(value, dict | list):
        return f"{rec.topic}/{rec.partition}/{rec.offset}"
    return value if type(value) is str else str(value)


def _as_orjson_reads(value: Any) -> Any:
    """A captured value of already decoded JSON (replay) as orjson would have read it from
    bytes: integers beyond its 64-bit range become the nearest float, so state holds only what
    the store can encode and replay keeps what `observer run` would."""
    kind = type(value)
    if kind is int:
        return value if INT_MIN <= value <= INT_MAX else float(value)
    if kind is list:
        return [_as_orjson_reads(v) for v in value]
    if kind is dict:
        return {k: _as_orjson_reads(v) for k, v in value.items()}
    return value


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
